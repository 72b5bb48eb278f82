"""Cell pictures: every edge drawn and labelled with its op, readable layouts, valid PNGs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import matplotlib.image
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch
from matplotlib.text import Text

from cnas_hpc.analysis.cells import cell_figure, draw_cell, draw_genotype
from cnas_hpc.space.encoding import make_encoding
from cnas_hpc.space.genotype import DARTS_V2, PC_DARTS, PRESETS, Genotype
from cnas_hpc.space.primitives import CELL_KINDS, EDGE_OPS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def op_labels(fig: Figure) -> list[Text]:
    """The edge labels: the texts drawn in a box whose content is an op name."""
    return [t for t in fig.findobj(Text) if t.get_text() in EDGE_OPS]


def check_cell(fig: Figure, genotype: Genotype, cell: str) -> None:
    """Every edge has one arrow and one label with its op; every node is named."""
    edges = list(getattr(genotype, cell))
    concat = list(getattr(genotype, f"{cell}_concat"))
    labels = Counter(t.get_text() for t in op_labels(fig))
    assert labels == Counter(op for op, _ in edges)
    texts = {t.get_text() for t in fig.findobj(Text)}
    n = len(edges) // 2
    assert {"$c_{k-2}$", "$c_{k-1}$", "$c_{k}$", *(str(i) for i in range(n))} <= texts
    assert len(fig.findobj(FancyArrowPatch)) == len(edges) + len(concat)
    assert len(fig.findobj(Circle)) == n + 3


def random_genotypes(encoding: str, n_nodes: int, count: int, seed: int) -> list[Genotype]:
    concat_last = 4 if encoding == "csnas" and n_nodes == 5 else None
    space = make_encoding(encoding, n_nodes=n_nodes, concat_last=concat_last)
    rng = random.Random(seed)
    return [
        space.from_params({k: rng.choice(d.choices) for k, d in space.distributions().items()})
        for _ in range(count)
    ]


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("cell", CELL_KINDS)
def test_every_preset_cell_is_drawn_with_all_its_ops(name: str, cell: str) -> None:
    genotype = PRESETS[name]
    fig = cell_figure(genotype, cell, title=name)
    check_cell(fig, genotype, cell)
    assert any(t.get_text() == f"{name} — {cell} cell" for t in fig.texts)


@pytest.mark.parametrize(
    ("encoding", "n_nodes"), [("compact", 4), ("compact", 5), ("csnas", 4), ("csnas", 5)]
)
def test_random_genotypes_of_both_encodings_are_drawn(encoding: str, n_nodes: int) -> None:
    for genotype in random_genotypes(encoding, n_nodes, count=2, seed=n_nodes):
        for cell in CELL_KINDS:
            check_cell(cell_figure(genotype, cell), genotype, cell)


@pytest.mark.parametrize("genotype", [DARTS_V2, PC_DARTS], ids=["DARTS_V2", "PC_DARTS"])
def test_preset_labels_overlap_neither_each_other_nor_nodes(genotype: Genotype) -> None:
    for cell in CELL_KINDS:
        fig = cell_figure(genotype, cell)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        boxes = []
        for label in op_labels(fig):
            patch = label.get_bbox_patch()
            assert patch is not None  # labels sit in a white box, readable over lines
            boxes.append(patch.get_window_extent(renderer))
        nodes = [c.get_window_extent(renderer) for c in fig.findobj(Circle)]
        for i, box in enumerate(boxes):
            assert not any(box.overlaps(other) for other in boxes[i + 1 :]), cell
            assert not any(box.overlaps(node) for node in nodes), cell


def test_nodes_that_never_reach_the_output_are_greyed() -> None:
    edges = [
        ("sep_conv_3x3", 0), ("skip_connect", 1),  # node 0: read only by node 2
        ("sep_conv_3x3", 0), ("skip_connect", 1),  # node 1: read by node 3
        ("max_pool_3x3", 2), ("dil_conv_3x3", 1),  # node 2
        ("avg_pool_3x3", 3), ("sep_conv_5x5", 0),  # node 3
    ]  # fmt: skip
    # Normal: only node 3 is concatenated, so nodes 2 and 0 are dead. Reduce: 2 and 3 are, so
    # everything is live.
    genotype = Genotype(normal=edges, normal_concat=[5], reduce=edges, reduce_concat=[4, 5])
    normal = {t.get_text(): t.get_color() for t in cell_figure(genotype, "normal").axes[0].texts}
    reduce = {t.get_text(): t.get_color() for t in cell_figure(genotype, "reduce").axes[0].texts}
    assert normal["0"] == normal["2"] != normal["1"] == normal["3"]
    assert normal["max_pool_3x3"] != normal["avg_pool_3x3"]  # the dead node's edges are grey
    assert len({reduce[str(i)] for i in range(4)}) == 1


def test_a_node_reading_one_input_twice_gets_two_visible_arrows() -> None:
    edges = [("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("skip_connect", 2), ("max_pool_3x3", 1)]
    genotype = Genotype(normal=edges, normal_concat=[2, 3], reduce=edges, reduce_concat=[2, 3])
    fig = cell_figure(genotype, "normal")
    check_cell(fig, genotype, "normal")
    styles = [a.get_connectionstyle() for a in fig.findobj(FancyArrowPatch)]
    rads = [s.rad for s in styles]  # type: ignore[attr-defined]
    assert rads[0] != rads[1]  # the two arrows c_{k-2} -> 0 do not lie on each other


def test_draw_genotype_writes_two_valid_pngs(tmp_path: Path) -> None:
    paths = draw_genotype(DARTS_V2, tmp_path / "cells", "best", title="trial 7")
    assert paths == [tmp_path / "cells" / "best_normal.png", tmp_path / "cells" / "best_reduce.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert width > 600 and height > 300
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_draw_cell_adds_png_suffix_and_creates_folders(tmp_path: Path) -> None:
    out = draw_cell(PC_DARTS, "reduce", tmp_path / "a" / "b" / "pc")
    assert out == tmp_path / "a" / "b" / "pc.png" and out.read_bytes()[:8] == PNG_MAGIC


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cell must be one of normal, reduce"):
        cell_figure(DARTS_V2, "middle")
    broken = DARTS_V2._replace(normal=[("conv_9x9", 0), ("skip_connect", 1)] * 4)
    with pytest.raises(ValueError, match="unknown op 'conv_9x9'"):
        draw_cell(broken, "normal", tmp_path / "x.png")
    with pytest.raises(ValueError, match="prefix"):
        draw_genotype(DARTS_V2, tmp_path, "../escape")
    assert not list(tmp_path.iterdir())
