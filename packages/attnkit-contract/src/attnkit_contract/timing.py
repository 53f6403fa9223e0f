"""The per-package time table of ``--attnkit-timing``: how much of the default test tier each
package takes, what it left to the slow tier and the full contract, and what 35 plugins cost.

Seconds are the sum of setup, call and teardown durations of a package's tests (contract
tests count for the plugin whose spec they check). Packages that are not plugins (the core,
the contract suite's own tests, cross-package tests) are fixed costs; plugins are the part
that grows, so the projection is ``fixed + 35 x (mean seconds per plugin)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["FIXED_GROUPS", "PROJECTED_PLUGINS", "format_timing", "projection"]

#: Packages whose tests do not grow with the number of plugins.
FIXED_GROUPS = ("attnkit", "attnkit-contract", "cross-package")
PROJECTED_PLUGINS = 35


def projection(seconds: Mapping[str, float], plugins: int = PROJECTED_PLUGINS) -> tuple[float, float, float]:
    """``(fixed seconds, mean seconds per plugin, projected seconds at plugins)``."""
    fixed = sum(v for g, v in seconds.items() if g in FIXED_GROUPS)
    per_plugin = [v for g, v in seconds.items() if g not in FIXED_GROUPS]
    mean = sum(per_plugin) / len(per_plugin) if per_plugin else 0.0
    return fixed, mean, fixed + plugins * mean


def format_timing(
    seconds: Mapping[str, float],
    tests: Mapping[str, int],
    slow_left: Mapping[str, int],
    contract_left: Iterable[Any],
    *,
    budget: float,
    profile: str,
) -> str:
    """The table and its footnotes as text.

    :param seconds: package -> seconds of its tests in this run.
    :param tests: package -> number of tests run.
    :param slow_left: package -> slow tests this run deselected.
    :param contract_left: :class:`~attnkit_contract.profiles.LeftOut` records of this run.
    :param budget: per-plugin seconds; plugins above it are flagged.
    :param profile: the contract profile of the run.
    """
    from attnkit.bench import format_table

    groups = sorted(set(seconds) | set(slow_left), key=lambda g: (g not in FIXED_GROUPS, g))
    # Only installed plugins' specs: the contract suite's own tests build specs of no plugin.
    left: dict[str, int] = {}
    for item in contract_left:
        if item.plugin in groups:
            left[item.plugin] = left.get(item.plugin, 0) + 1
    rows = []
    for g in groups:
        s = seconds.get(g, 0.0)
        over = g not in FIXED_GROUPS and s > budget
        rows.append(
            [
                g,
                str(tests.get(g, 0)),
                f"{s:.1f}",
                "OVER" if over else ("" if g in FIXED_GROUPS else "ok"),
                str(slow_left.get(g, 0)),
                str(left.get(g, 0)),
            ]
        )
    headers = ["package", "tests", "seconds", f"budget {budget:g} s", "slow tests left", "contract checks left"]
    lines = [format_table(headers, rows, right=(1, 2, 4, 5))]
    fixed, mean, total = projection(seconds)
    n_plugins = len([g for g in seconds if g not in FIXED_GROUPS])
    lines.append(
        f"projection: fixed {fixed:.0f} s + {PROJECTED_PLUGINS} plugins x {mean:.1f} s (mean of {n_plugins}) "
        f"= {total:.0f} s ({total / 60:.1f} min) of test time"
    )
    n_slow = sum(slow_left.values())
    if n_slow:
        lines.append(f"{n_slow} slow tests were left to `nox -s slow` and `nox -s plugin-<slug>`.")
    n_left = sum(left.values())
    if n_left:
        lines.append(
            f"the {profile!r} contract profile left {n_left} checks to `nox -s slow` "
            "(profile rest) and `attnkit check PLUGIN --full`."
        )
    return "\n".join(lines)
