"""attnkit.figures.figure: saves one PNG of the asked size, closes the figure, validates input."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from attnkit.figures import figure, pyplot


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", data[16:24])


def test_saves_a_png_of_figsize_times_dpi_and_closes_it(tmp_path: Path) -> None:
    plt = pyplot()
    before = set(plt.get_fignums())
    saved: list[Path] = []
    target = tmp_path / "sub" / "line.png"
    with figure(target, figsize=(4.0, 2.5), dpi=50, layout="none", into=saved) as (fig, ax):
        ax.plot([0, 1, 2], [1, 0, 1])
        assert fig.get_size_inches().tolist() == [4.0, 2.5]
    assert saved == [target]
    assert _png_size(target) == (200, 125)
    assert set(plt.get_fignums()) == before


def test_grid_of_axes_and_fixed_margins(tmp_path: Path) -> None:
    with figure(tmp_path / "g.png", nrows=2, ncols=3, layout={"left": 0.2, "top": 0.8}, squeeze=False) as (fig, axes):
        assert axes.shape == (2, 3)
    assert fig.subplotpars.left == pytest.approx(0.2)
    assert fig.subplotpars.top == pytest.approx(0.8)


def test_constrained_layout_is_passed_to_subplots(tmp_path: Path) -> None:
    with figure(tmp_path / "c.png", layout="constrained") as (fig, _ax):
        assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"


def test_an_error_in_the_body_closes_the_figure_and_saves_nothing(tmp_path: Path) -> None:
    plt = pyplot()
    before = set(plt.get_fignums())
    saved: list[Path] = []
    with pytest.raises(RuntimeError, match="boom"), figure(tmp_path / "x.png", into=saved):
        raise RuntimeError("boom")
    assert not (tmp_path / "x.png").exists()
    assert saved == []
    assert set(plt.get_fignums()) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dpi": 0}, "dpi"),
        ({"nrows": 0}, "nrows"),
        ({"ncols": 1.5}, "ncols"),
        ({"figsize": (3.0,)}, "figsize"),
        ({"figsize": (3.0, -1.0)}, "figsize"),
        ({"layout": "loose"}, "layout"),
        ({"layout": {"middle": 0.5}}, "middle"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match), figure(tmp_path / "bad.png", **kwargs):
        pass
    assert not (tmp_path / "bad.png").exists()


def test_importing_the_module_does_not_import_matplotlib() -> None:
    code = "import sys, attnkit.figures; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_available_says_whether_matplotlib_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnkit.figures as figures

    assert figures.available()
    monkeypatch.setattr(figures.importlib.util, "find_spec", lambda name: None)
    assert not figures.available()
