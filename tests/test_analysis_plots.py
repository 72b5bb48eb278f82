"""The study's pictures read well: one title each, never cut off, nodes numbered as drawn."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import patch

import matplotlib.pyplot as plt
import optuna
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnas_hpc.analysis import plots
from cnas_hpc.space.encoding import CompactEncoding

STUDY = "a-study-with-a-rather-long-name-as-users-give-them"


@pytest.fixture
def study() -> optuna.Study:
    encoding = CompactEncoding(n_nodes=4)
    study = optuna.create_study(
        study_name=STUDY, sampler=optuna.samplers.RandomSampler(seed=0), direction="minimize"
    )
    study.optimize(
        lambda t: float(len(str(encoding.suggest(t)))) % 7.0 + t.number * 0.01, n_trials=12
    )
    return study


def _saved_figure(draw: object, study: optuna.Study, path: Path) -> Figure:
    """Run a plot function and keep the figure it saved (it closes it from pyplot)."""
    saved: list[Figure] = []
    original = plots.save_figure

    def keep(fig: Figure, out: str | Path) -> Path:
        saved.append(fig)
        return original(fig, out)

    with patch.object(plots, "save_figure", keep):
        draw(study, path)  # type: ignore[operator]
    return saved[0]


@pytest.mark.parametrize("draw", [plots.plot_history, plots.plot_importances])
def test_one_title_that_fits_the_figure(draw: object, study: optuna.Study, tmp_path: Path) -> None:
    fig = _saved_figure(draw, study, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").is_file()
    (ax,) = fig.axes
    # Optuna's own title is gone (the history's is centred, ours was printed over it).
    assert [ax.get_title(loc=loc) for loc in ("left", "center", "right")] == ["", "", ""]
    title = fig.get_suptitle()
    assert title.startswith(STUDY)
    renderer = FigureCanvasAgg(fig).get_renderer()  # pyplot let go of the saved figure
    (text,) = [t for t in fig.texts if t.get_text() == title]
    box = text.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # not cut off on either side
    assert box.y0 >= ax.get_window_extent(renderer).y1  # above the axes, not over them
    plt.close(fig)


def test_the_importances_name_nodes_as_the_cell_drawings_do(
    study: optuna.Study, tmp_path: Path
) -> None:
    fig = _saved_figure(plots.plot_importances, study, tmp_path / "importances.png")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels and all("/node " in label for label in labels), labels
    assert not any("/n2/" in label or "/n5/" in label for label in labels)
    assert plots.node_label("normal/n2/inputs") == "normal/node 0/inputs"
    assert plots.node_label("reduce/n5/op1") == "reduce/node 3/op1"
    plt.close(fig)
