"""``attnkit analyze graph_attention``: how an LLM's attention follows a graph written as text,
and what the paper's k-hop attention window does to zero-shot graph questions.

1. Attention by hop distance: seeded random graphs (or ``--prompts`` graphs of ``u - v``
   lines), each serialised in ``n_shuffles`` random orders and followed by a degree question
   about one node. From the head-averaged prefill pattern of every layer:
   node -> earlier node attention per key token by hop class (same node, 1-hop, 2-hop, 3+),
   beside a random earlier token and the distance-matched 1-hop / non-neighbour ratio; and the
   question tokens' column-averaged attention to node tokens by hop from the asked node.
2. Zero-shot questions ("is there an edge between X and Y", "how many neighbours does X have"),
   scored on the next token of the answer choices, with full causal attention and with
   ``graph_khop`` patched into every layer at each ``k`` of ``khops``; the control is the same
   window built from a node-relabelled graph (same names, same degree sequence, wrong edges).
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch

from attnkit.analyze import AnalyzeContext, AnalyzeOutcome, Comparison
from attnkit_graph_attention.metrics import CLASSES, hop_profile, text_to_node_profile
from attnkit_graph_attention.params import GraphAttentionParams
from attnkit_graph_attention.prompts import GraphPrompt, encode, layout_tensors
from attnkit_graph_attention.serialize import (
    KINDS,
    Graph,
    degree_question,
    make_questions,
    parse_graph,
    random_graph,
    relabelled,
    serialize,
)

__all__ = ["analyze", "answer_scores", "attention_by_hop", "khop_params"]


def khop_params(prompt: GraphPrompt, graph: Graph, hops: int, bidirectional: bool) -> dict[str, Any]:
    """``attention_params`` of ``graph_khop`` for one prompt layout."""
    return {"spans": prompt.spans, "edges": graph.edges, "hops": hops, "bidirectional": bidirectional}


def _nanmean(rows: list[torch.Tensor]) -> list[float]:
    return torch.stack(rows).nanmean(0).tolist()


def attention_by_hop(
    model: Any, tokenizer: Any, items: list[tuple[GraphPrompt, Graph]], ctx: AnalyzeContext
) -> dict[str, Any]:
    """Part 1: per-layer hop profiles averaged over ``items`` (NaN classes left out)."""
    import attnkit
    from attnkit_graph_attention.runtime import HeadMeanPatterns

    node_rows: dict[str, list[torch.Tensor]] = {}
    text_rows: dict[str, list[torch.Tensor]] = {}
    pairs = torch.zeros(len(CLASSES), dtype=torch.int64)
    for prompt, graph in ctx.tqdm(items, desc="attention by hop"):
        cap = HeadMeanPatterns()
        with torch.no_grad(), attnkit.patch(model, "dense", analyses=[cap]):
            model(torch.tensor([prompt.ids]))
        pattern = cap.stacked()
        node, span = layout_tensors(prompt)
        hops = graph.hops()
        prof = hop_profile(pattern, node, span, hops)
        pairs += prof.pop("pairs")
        for name, v in prof.items():
            node_rows.setdefault(name, []).append(v)
        q = text_to_node_profile(pattern, node, slice(prompt.graph_len, len(prompt.ids)), hops[prompt.question.target])
        for name, v in q.items():
            text_rows.setdefault(name, []).append(v)
    return {
        "node_to_node": {k: _nanmean(v) for k, v in node_rows.items()},
        "question_to_node": {k: _nanmean(v) for k, v in text_rows.items()},
        "pairs": dict(zip(CLASSES, pairs.tolist())),
        "prompts": len(items),
    }


def answer_scores(
    model: Any, prompts: list[GraphPrompt], attention: str, params: list[dict[str, Any]] | None
) -> tuple[list[bool], list[float]]:
    """Whether a right choice gets the highest next-token logit among the choices, and the
    log-probability (among the choices) of the right ones, for each prompt.

    Prompts of one graph share their graph tokens: those are prefilled once (under the same
    attention) and the questions continue from the cache as one right-padded batch; padding
    after a question never reaches its own tokens under causal attention. ``params`` gives one
    ``attention_params`` per prompt (``None`` for none); prompts sharing the dict object and the
    graph prefix run together.
    """
    import transformers
    from packaging.version import Version

    import attnkit

    # transformers 5 renamed forward's past_key_values= to cache=
    cache_kw = "cache" if Version(transformers.__version__).major >= 5 else "past_key_values"
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, pr in enumerate(prompts):
        key = (pr.ids[: pr.graph_len], None if params is None else id(params[i]))
        groups.setdefault(key, []).append(i)
    correct = [False] * len(prompts)
    logp = [0.0] * len(prompts)
    for (prefix, _), idx in groups.items():
        suffixes = [prompts[i].ids[len(prefix) :] for i in idx]
        ids = torch.zeros(len(idx), max(len(x) for x in suffixes), dtype=torch.int64)
        for r, x in enumerate(suffixes):
            ids[r, : len(x)] = torch.tensor(x)
        kwargs = {} if params is None else {"attention_params": params[idx[0]]}
        with torch.no_grad(), attnkit.patch(model, attention, **kwargs):
            cache = getattr(model(torch.tensor([prefix]), use_cache=True), cache_kw)
            cache.batch_repeat_interleave(len(idx))
            logits = model(ids, use_cache=True, **{cache_kw: cache}).logits
        for r, i in enumerate(idx):
            pr = prompts[i]
            scores = logits[r, len(suffixes[r]) - 1, list(pr.choice_tokens)].double()
            right = list(pr.question.answers)
            correct[i] = int(scores.argmax()) in right
            logp[i] = float(torch.logsumexp(torch.log_softmax(scores, -1)[right], -1))
    return correct, logp


def _masked_share(prompt: GraphPrompt, graph: Graph, hops: int) -> float:
    """Share of the causal (node token, earlier node token) pairs the k-hop window removes."""
    from attnkit_graph_attention.graph import khop_mask
    from attnkit_graph_attention.params import GraphKhopParams

    t = len(prompt.ids)
    params = GraphKhopParams(**khop_params(prompt, graph, hops, False))
    allowed = khop_mask(params, t, t, True)
    node, _ = layout_tensors(prompt)
    is_node = node >= 0
    pairs = is_node[:, None] & is_node[None, :] & torch.ones(t, t, dtype=torch.bool).tril()
    return float((pairs & ~allowed).sum()) / max(int(pairs.sum()), 1)


def _accuracy(correct: list[bool], prompts: list[GraphPrompt], kind: str | None) -> tuple[float, int]:
    sel = [c for c, p in zip(correct, prompts) if kind is None or p.question.kind == kind]
    return (sum(sel) / len(sel) if sel else math.nan), len(sel)


def analyze(ctx: AnalyzeContext) -> AnalyzeOutcome:
    """Run both parts on ``ctx.model_name`` (SmolLM2) and build the report."""
    from attnkit_graph_attention.plots import bars, layer_lines

    p: GraphAttentionParams = ctx.params
    n_graphs = min(p.n_graphs, 3) if ctx.quick else p.n_graphs
    n_shuffles = 1 if ctx.quick else p.n_shuffles
    per_kind = min(p.questions, 2) if ctx.quick else p.questions
    rng = random.Random(ctx.seed)
    if ctx.prompts:
        graphs = [parse_graph(text) for text in ctx.prompts]
    else:
        graphs = [random_graph(p.n_nodes, p.edge_prob, rng) for _ in range(n_graphs)]
    model, tokenizer = ctx.load_model()
    ctx.out_dir.mkdir(parents=True, exist_ok=True)

    # Part 1: each graph in n_shuffles random orders, followed by a degree question.
    items = []
    for g in graphs:
        for _ in range(n_shuffles):
            q = degree_question(g, rng.randrange(g.n))
            items.append((encode(tokenizer, serialize(g, p.fmt, rng), q), g))
    hop = attention_by_hop(model, tokenizer, items, ctx)

    # Part 2: zero-shot questions under full attention, the k-hop windows and their controls.
    prompts: list[GraphPrompt] = []
    real: list[Graph] = []
    control: list[Graph] = []
    for g in graphs:
        ser = serialize(g, p.fmt, rng)
        ctrl = relabelled(g, rng)
        for question in make_questions(g, per_kind, rng):
            prompts.append(encode(tokenizer, ser, question))
            real.append(g)
            control.append(ctrl)
    conditions: list[tuple[str, str, list[dict[str, Any]] | None]] = [("full causal", "dense", None)]
    for k in p.khops:
        # one dict per graph, shared by its questions, so each graph runs as one batch
        by_graph_real: dict[int, dict[str, Any]] = {}
        by_graph_ctrl: dict[int, dict[str, Any]] = {}
        real_params, ctrl_params = [], []
        for pr, g, c in zip(prompts, real, control):
            key = id(g)
            by_graph_real.setdefault(key, khop_params(pr, g, k, p.bidirectional))
            by_graph_ctrl.setdefault(key, khop_params(pr, c, k, p.bidirectional))
            real_params.append(by_graph_real[key])
            ctrl_params.append(by_graph_ctrl[key])
        conditions.append((f"graph_khop k={k}", "graph_khop", real_params))
        conditions.append((f"control k={k}", "graph_khop", ctrl_params))
    answers: dict[str, tuple[list[bool], list[float]]] = {}
    for label, attention, params in ctx.tqdm(conditions, desc="zero-shot questions"):
        answers[label] = answer_scores(model, prompts, attention, params)

    # Report.
    out = AnalyzeOutcome()
    n_layers = len(hop["node_to_node"]["1-hop"])
    nn = hop["node_to_node"]
    qn = hop["question_to_node"]
    ratio = nn["distance-matched ratio"]
    out.figures.append(
        layer_lines(
            ctx.out_dir / "node_to_node_by_hop.png",
            {**{c: nn[c] for c in CLASSES}, "random earlier token": nn["random"]},
            f"node -> earlier node attention per key token ({hop['prompts']} prompts)",
            "mean attention",
            log=True,
        )
    )
    out.figures.append(
        layer_lines(
            ctx.out_dir / "distance_matched_ratio.png",
            {
                "1-hop / non-neighbour, distance-matched": ratio,
                "1-hop / random token": [a / b for a, b in zip(nn["1-hop"], nn["random"])],
            },
            "neighbour preference beyond position bias (1 = none)",
            "ratio",
            hline=1.0,
        )
    )
    out.figures.append(
        layer_lines(
            ctx.out_dir / "question_to_node_by_hop.png",
            {("asked node" if c == "same node" else c): qn[c] for c in CLASSES},
            "question -> node tokens: column average over the question rows",
            "mean attention",
            log=True,
        )
    )
    groups = ["all", *KINDS]
    acc: dict[str, list[float]] = {}
    counts: dict[str | None, int] = {}
    for label, (correct, _) in answers.items():
        acc[label] = []
        for kind in (None, *KINDS):
            a, n = _accuracy(correct, prompts, kind)
            acc[label].append(a)
            counts[kind] = n
    # chance: a uniformly random choice; for neighbour lookup any neighbour is right
    chance_q = [len(pr.question.answers) / len(pr.question.choices) for pr in prompts]
    chance = [sum(chance_q) / len(chance_q)]
    for kind in KINDS:
        sel = [c for c, pr in zip(chance_q, prompts) if pr.question.kind == kind]
        chance.append(sum(sel) / len(sel) if sel else math.nan)
    out.figures.append(
        bars(
            ctx.out_dir / "qa_accuracy.png",
            groups,
            acc,
            f"zero-shot accuracy ({len(prompts)} questions)",
            chance,
        )
    )
    for k in p.khops:
        for gi, kind in enumerate((None, *KINDS)):
            metric = f"accuracy ({kind or 'all'} questions)"
            out.comparisons.append(
                Comparison(
                    intervention=f"graph_khop k={k} in all layers{' (bidirectional)' if p.bidirectional else ''}",
                    metric=metric,
                    effect=acc[f"graph_khop k={k}"][gi],
                    control=acc[f"control k={k}"][gi],
                    control_name=f"k={k} window of a node-relabelled graph (same degrees)",
                    baseline=acc["full causal"][gi],
                    n=counts[kind],
                )
            )
        logp = {label: sum(v[1]) / len(v[1]) for label, v in answers.items()}
        out.comparisons.append(
            Comparison(
                intervention=f"graph_khop k={k} in all layers",
                metric="mean log-prob of the right choice",
                effect=logp[f"graph_khop k={k}"],
                control=logp[f"control k={k}"],
                control_name=f"k={k} window of a node-relabelled graph (same degrees)",
                baseline=logp["full causal"],
                n=len(prompts),
            )
        )
    masked = {
        k: (
            sum(_masked_share(pr, g, k) for pr, g in zip(prompts, real)) / len(prompts),
            sum(_masked_share(pr, c, k) for pr, c in zip(prompts, control)) / len(prompts),
        )
        for k in p.khops
    }

    layers_pref = sum(1 for r in ratio if r == r and r > 1.0)
    mean = lambda xs: sum(x for x in xs if x == x) / max(sum(1 for x in xs if x == x), 1)  # noqa: E731
    out.summary = {
        "prompts (attention part)": hop["prompts"],
        "questions (QA part)": len(prompts),
        "layers with distance-matched 1-hop/non-neighbour ratio > 1": f"{layers_pref}/{n_layers}",
        "mean distance-matched ratio over layers": mean(ratio),
        "mean 1-hop attention / random token": mean([a / b for a, b in zip(nn["1-hop"], nn["random"])]),
        "mean question->asked node / question->2-hop node": mean([a / b for a, b in zip(qn["same node"], qn["2-hop"])]),
        **{f"accuracy {label}": acc[label][0] for label in acc},
        "chance accuracy (random choice)": chance[0],
    }
    header = [
        "layer",
        *[f"node->{c}" for c in CLASSES],
        "node->random",
        "dist-matched ratio",
        *[f"question->{c}" for c in CLASSES],
    ]
    rows = [
        [i, *[nn[c][i] for c in CLASSES], nn["random"][i], ratio[i], *[qn[c][i] for c in CLASSES]]
        for i in range(n_layers)
    ]
    out.tables.append((header, rows))
    out.tables.append(
        (
            ["condition", *[f"accuracy {g}" for g in groups], "masked share of causal node-node pairs"],
            [
                [
                    label,
                    *acc[label],
                    "-"
                    if label == "full causal"
                    else masked[int(label.split("=")[1])][0 if label.startswith("graph") else 1],
                ]
                for label in acc
            ],
        )
    )
    out.paragraphs = [
        f"{len(graphs)} graphs of {graphs[0].n if not ctx.prompts else 'given'} nodes written as {p.fmt!r} lines; "
        f"node tokens are the tokens of every mention of a node's name in the graph part (question tokens are text).",
        "Attention by hop: head-averaged prefill attention per layer; for node -> node, the mean attention a node token "
        "gives one earlier node token of each hop class (mentions of the same node, 1-hop, 2-hop, 3+); 'random earlier "
        "token' is the exact expectation for a uniformly drawn earlier token of the same query rows. Neighbours are "
        "often written close together, so the distance-matched ratio compares 1-hop and non-neighbour pairs at the "
        f"same query-key distance; each graph is written in {n_shuffles} shuffled orders (lines and names in a line).",
        "Question -> node: per node token, its column average over the question's rows (the mean over the rows that "
        "may attend to it, i.e. the non-zero entries), then averaged per hop class from the asked node.",
        "Zero-shot: the next-token logit of each choice decides; graph_khop restricts node tokens to node tokens within "
        "k hops in every layer, text tokens stay causal. The control applies the same window with the edges of a "
        "node-relabelled graph (same degree sequence); the last column says how many node-node pairs each masks.",
    ]
    out.results = {
        "attention_by_hop": hop,
        "qa": {label: {"accuracy": dict(zip(groups, acc[label])), "correct": answers[label][0]} for label in acc},
        "chance": dict(zip(groups, chance)),
        "questions": [
            {"kind": pr.question.kind, "text": pr.question.text, "answers": list(pr.question.answers)} for pr in prompts
        ],
        "masked_share": {str(k): {"graph_khop": v[0], "control": v[1]} for k, v in masked.items()},
        "graphs": [{"names": list(g.names), "edges": [list(e) for e in g.edges]} for g in graphs],
    }
    return out
