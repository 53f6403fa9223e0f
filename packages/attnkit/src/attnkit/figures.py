"""Report figures: matplotlib on the Agg backend, one PNG per figure, always closed.

Every report (``attnkit run``, ``attnkit eval cache``, ``attnkit analyze`` plugins) draws its
figures the same way: switch to Agg so no display is needed, open a figure, lay it out, save a
small PNG, close it so a long analysis does not pile up open figures. :func:`figure` is that
sequence once::

    from attnkit.figures import figure

    paths = []
    with figure(out_dir / "loss.png", figsize=(6, 3), into=paths) as (fig, ax):
        ax.plot(steps, loss)
        ax.set_xlabel("step")

matplotlib is imported when a figure is drawn, never when this module is imported.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attnkit.paramcheck import check_int

__all__ = ["available", "figure", "pyplot"]

#: ``layout=`` values other than a margins mapping.
LAYOUTS = ("tight", "constrained", "none")
_MARGINS = frozenset({"left", "right", "bottom", "top", "wspace", "hspace"})


def available() -> bool:
    """Whether matplotlib is installed (reports leave their figures out when it is not)."""
    return importlib.util.find_spec("matplotlib") is not None


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (raises ``ImportError`` without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_layout(layout: str | Mapping[str, float]) -> None:
    if isinstance(layout, Mapping):
        unknown = sorted(set(layout) - _MARGINS)
        if unknown:
            raise ValueError(f"layout: unknown margin(s) {unknown}; expected some of {sorted(_MARGINS)}")
        return
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or a mapping of margins, got {layout!r}")


@contextmanager
def figure(
    path: str | os.PathLike[str],
    *,
    nrows: int = 1,
    ncols: int = 1,
    figsize: tuple[float, float] = (7.0, 3.6),
    dpi: int = 90,
    layout: str | Mapping[str, float] = "tight",
    into: list[Path] | None = None,
    **subplots: Any,
) -> Iterator[tuple[Any, Any]]:
    """Open a figure, yield ``(fig, axes)``, then lay it out, save it to ``path`` and close it.

    ``axes`` is what ``plt.subplots(nrows, ncols, **subplots)`` returns (one Axes for 1 x 1;
    pass ``squeeze=False`` for a 2-D array always). ``layout``: ``"tight"`` (``tight_layout``
    after drawing), ``"constrained"`` (matplotlib's constrained layout), ``"none"``, or a
    mapping of fixed margins for ``subplots_adjust`` (``left``, ``right``, ``bottom``, ``top``,
    ``wspace``, ``hspace``): fixed margins cost nothing, while ``tight_layout`` measures every
    tick label, which takes seconds per figure on a loaded machine. The folder of ``path`` is
    created. ``into``: a list the saved path is appended to.

    When the body raises, the figure is closed, nothing is saved and the error propagates.
    """
    check_int("nrows", nrows, 1)
    check_int("ncols", ncols, 1)
    check_int("dpi", dpi, 1)
    _check_layout(layout)
    if len(figsize) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in figsize):
        raise ValueError(f"figsize must be two positive numbers (width, height) in inches, got {figsize!r}")
    out = Path(path)
    plt = pyplot()
    if layout == "constrained":
        subplots = {**subplots, "layout": "constrained"}
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **subplots)
    try:
        yield fig, axes
        if layout == "tight":
            fig.tight_layout()
        elif isinstance(layout, Mapping):
            fig.subplots_adjust(**layout)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    if into is not None:
        into.append(out)
