"""attnkit demo: 2D neighborhood attention on a real image, checked, timed and plotted.

Takes a handwritten digit from scikit-learn's bundled ``load_digits`` (8x8, no download),
upsamples it to 64x64, builds per-pixel features, and runs 2D neighborhood attention with a
7x7 window through ``attnkit.attention``. It prints which backend attnkit chose (and why the
ones before it were skipped), checks the result against the plain-torch reference backend,
prints output statistics and a one-line benchmark (numba vs reference vs dense SDPA over all
pixels), and writes a PNG with the input, the attention output and one query's attention
pattern. Run it with ``nox -s demo`` or ``python tools/demo.py [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HEADS = 2
HEAD_DIM = 16


def load_image(index: int, size: int):
    """A digit from ``load_digits`` scaled to ``[0, 1]`` and upsampled to ``(size, size)``."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    if not 0 <= index < len(digits.images):
        raise ValueError(f"--index must be in [0, {len(digits.images)}), got {index}")
    img = torch.tensor(digits.images[index], dtype=torch.float32) / 16.0  # pixel values are 0..16
    up = F.interpolate(img[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return up.clamp(0, 1), int(digits.target[index])


def pixel_features(img):
    """``(X, Y, C)`` features: intensity, its gradients, and sinusoidal position codes."""
    import torch
    import torch.nn.functional as F

    x, y = img.shape
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    padded = F.pad(img[None, None], (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel[None, None])[0, 0]
    gy = F.conv2d(padded, sobel.T.contiguous()[None, None])[0, 0]
    ii, jj = torch.meshgrid(torch.arange(x, dtype=torch.float32), torch.arange(y, dtype=torch.float32), indexing="ij")
    codes = []
    for freq in (1, 2, 4):
        for coord, n in ((ii, x), (jj, y)):
            angle = 2 * math.pi * freq * coord / n
            codes += [torch.sin(angle), torch.cos(angle)]
    return torch.stack([img, gx, gy, *codes], dim=-1)


def make_qkv(feats, seed: int):
    """Project features to ``q, k, v`` of shape ``(1, H, X, Y, D)``; ``v[..., 0]`` is the intensity."""
    import torch

    g = torch.Generator().manual_seed(seed)
    c = feats.shape[-1]
    wq = torch.randn(HEADS, c, HEAD_DIM, generator=g) / math.sqrt(c)
    wk = torch.randn(HEADS, c, HEAD_DIM, generator=g) / math.sqrt(c)
    wv = torch.randn(HEADS, c, HEAD_DIM, generator=g) / math.sqrt(c)
    # Sharpen the logits a little so the pattern follows the image, not just the distance.
    q = 3.0 * torch.einsum("xyc,hcd->hxyd", feats, wq)[None]
    k = torch.einsum("xyc,hcd->hxyd", feats, wk)[None]
    v = torch.einsum("xyc,hcd->hxyd", feats, wv)[None]
    v[..., 0] = feats[..., 0]  # so output channel 0 is an attention-weighted image
    return q.contiguous(), k.contiguous(), v.contiguous()


def explain_choice(spec, q, params) -> str:
    """Name the backend ``choose`` picks for this call, with the reasons earlier ones were skipped."""
    import attnkit
    from attnkit import CallInfo

    call = CallInfo(device=q.device, dtype=q.dtype, params=params, q_shape=tuple(q.shape))
    chosen = attnkit.choose(spec, call)
    lines = [f"backend chosen: {chosen.name} ({chosen.description})"]
    for b in spec.backends:
        if b is chosen:
            break
        why = "only when asked by name" if not b.auto else b.reason_not_to_run(call)
        lines.append(f"  skipped {b.name}: {why}")
    return "\n".join(lines)


def attention_pattern(q, k, kernel, query_xy, scale):
    """Softmax weights of one query over its window, scattered onto the ``(X, Y)`` grid (head 0)."""
    import torch

    from attnkit_neighborhood.windows import flat_windows

    x, y = q.shape[2], q.shape[3]
    idx, valid = flat_windows((x, y), kernel, (1, 1), (False, False))
    n = query_xy[0] * y + query_xy[1]
    keys = idx[n][valid[n]]
    qf = q[0, 0].reshape(x * y, -1).double()
    kf = k[0, 0].reshape(x * y, -1).double()
    w = torch.softmax((kf[keys] @ qf[n]) * scale, dim=0)
    grid = torch.zeros(x * y, dtype=torch.float64)
    grid[keys] = w
    return grid.reshape(x, y)


def timed(fn, repeats: int, label: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up (JIT compile, caches)."""
    from tqdm import tqdm

    fn()
    times = []
    for _ in tqdm(range(repeats), desc=f"bench {label:9s}", leave=False, file=sys.stderr):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def benchmark(spec, q, k, v, kernel, repeats: int) -> str:
    import attnkit

    def run(backend):
        return lambda: spec(q, k, v, kernel_size=kernel, backend=backend)

    results: dict[str, float | str] = {}
    for name in ("numba", "reference"):
        try:
            results[name] = timed(run(name), repeats, name)
        except (RuntimeError, NotImplementedError, ImportError) as exc:
            results[name] = f"unavailable ({exc})"
    # Dense SDPA over all X*Y pixels: what the window saves.
    b, h, x, y, d = q.shape
    flat = [t.reshape(b, h, x * y, d) for t in (q, k, v)]
    results["dense sdpa"] = timed(lambda: attnkit.attention(*flat, spec="dense", backend="sdpa"), repeats, "sdpa")
    parts = []
    for name, t in results.items():
        parts.append(f"{name} {t * 1e3:.2f} ms" if isinstance(t, float) else f"{name} {t}")
    line = f"benchmark ({x}x{y} pixels, {h} heads, D={d}, kernel {kernel[0]}x{kernel[1]}, median of {repeats}): "
    line += ", ".join(parts)
    fast = results.get("numba")
    if isinstance(fast, float):
        ref, dense = results["reference"], results["dense sdpa"]
        ratios = []
        if isinstance(ref, float):
            ratios.append(f"numba is {ref / fast:.1f}x the reference")
        if isinstance(dense, float):
            ratios.append(f"{dense / fast:.1f}x dense SDPA")
        line += " -> " + ", ".join(ratios)
    return line


def plot(path: Path, img, out, pattern, query_xy, label: int, backend: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].imshow(img.numpy(), cmap="gray")
    axes[0].set_title(f"input: digit {label}, upsampled to {img.shape[0]}x{img.shape[1]}")
    axes[1].imshow(out.numpy(), cmap="gray")
    axes[1].set_title(f"neighborhood attention output ({backend})")
    # Zoom on the window: at full size a 7x7 patch of a 64x64 grid is a few pixels wide.
    r = 8
    x0, y0 = max(query_xy[0] - r, 0), max(query_xy[1] - r, 0)
    crop = pattern[x0 : query_xy[0] + r + 1, y0 : query_xy[1] + r + 1]
    im = axes[2].imshow(crop.numpy(), cmap="magma")
    axes[2].scatter([query_xy[1] - y0], [query_xy[0] - x0], marker="+", color="cyan", s=80)
    axes[2].set_title(f"weights of query {tuple(query_xy)} (zoom)")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="2D neighborhood attention on a real digit image.")
    parser.add_argument("--out", type=Path, default=Path("attnkit-demo"), help="output folder (default ./attnkit-demo)")
    parser.add_argument("--index", type=int, default=0, help="which load_digits image (default 0)")
    parser.add_argument("--size", type=int, default=64, help="upsampled side length (default 64)")
    parser.add_argument("--kernel", type=int, default=7, help="window side (default 7)")
    parser.add_argument("--repeats", type=int, default=5, help="benchmark repeats (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kernel > args.size:
        parser.error(f"--kernel {args.kernel} must not exceed --size {args.size}")

    import torch

    import attnkit

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    img, label = load_image(args.index, args.size)
    q, k, v = make_qkv(pixel_features(img), args.seed)
    kernel = (args.kernel, args.kernel)
    spec = attnkit.get_spec("neighborhood", "attention")
    print(f"attnkit {attnkit.__version__}, torch {torch.__version__}; spec {spec.name}: {spec.paper}")
    print(f"input: load_digits[{args.index}] (digit {label}) -> q/k/v {tuple(q.shape)} (B, H, X, Y, D)")
    print(explain_choice(spec, q, spec.make_params(kernel_size=kernel)))

    out = attnkit.attention(q, k, v, spec="neighborhood", kernel_size=kernel)
    want = attnkit.attention(
        q.double(), k.double(), v.double(), spec="neighborhood", kernel_size=kernel, backend="reference"
    )
    err = float((out.double() - want).abs().max())
    tol = 1e-4
    status = "OK" if err <= tol else "MISMATCH"
    print(f"check vs float64 reference backend: max abs error {err:.2e} (tolerance {tol:.0e}) {status}")
    smooth = out[0, 0, ..., 0]
    print(
        f"output {tuple(out.shape)} {str(out.dtype).removeprefix('torch.')}: mean {out.mean():.4f}, std {out.std():.4f}, "
        f"min {out.min():.4f}, max {out.max():.4f}; intensity channel vs input: "
        f"mean abs change {(smooth - img).abs().mean():.4f}"
    )

    print(benchmark(spec, q, k, v, kernel, args.repeats))

    query_xy = (args.size // 2, args.size // 2)
    pattern = attention_pattern(q, k, kernel, query_xy, HEAD_DIM**-0.5)
    # The pattern is recomputed from the window indices; weighting v by it must give the
    # attention output at that pixel, which ties the picture to what the kernel computed.
    via_pattern = torch.einsum("xy,xyd->d", pattern, v[0, 0].double())
    pattern_err = float((via_pattern - out[0, 0, query_xy[0], query_xy[1]].double()).abs().max())
    print(f"query {query_xy}: pattern sums to {float(pattern.sum()):.6f}, pattern @ v vs output {pattern_err:.1e}")
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "neighborhood-digit.png"
    chosen = explain_choice(spec, q, spec.make_params(kernel_size=kernel)).split()[2]
    plot(png, img, smooth.detach(), pattern, query_xy, label, chosen)
    print(f"wrote {png.resolve()}")
    print(f"done in {time.perf_counter() - t_start:.1f} s; output folder: {args.out.resolve()}")
    return 0 if status == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
