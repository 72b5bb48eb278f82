"""Tests of cnas_hpc.space.genotype: presets, JSON, canonical form, hash, validation, loading."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnas_hpc.space.genotype import (
    PRESETS,
    Genotype,
    canonical_genotype,
    genotype_from_dict,
    genotype_from_json,
    genotype_hash,
    genotype_to_dict,
    genotype_to_json,
    load_genotype,
    num_nodes,
    validate_genotype,
)
from cnas_hpc.space.primitives import EDGE_OPS
from tests.helpers import two_node_genotype

#: The other fields of a genotype dict, for tests that break only ``normal``.
EMPTY: dict[str, Any] = {"normal_concat": [], "reduce": [], "reduce_concat": []}
HEX16 = re.compile(r"[0-9a-f]{16}")
FAST = settings(max_examples=150, deadline=None)


@st.composite
def genotypes(draw: st.DrawFn, max_nodes: int = 5) -> Genotype:
    """Random valid genotypes, in any of the container types a user may write them with."""
    n = draw(st.integers(1, max_nodes))

    def cell() -> list[tuple[str, int]]:
        return [
            (draw(st.sampled_from(EDGE_OPS)), draw(st.integers(0, node - 1)))
            for node in range(2, n + 2)
            for _ in range(2)
        ]

    def concat() -> Any:
        states = draw(st.lists(st.integers(2, n + 1), min_size=1, max_size=n, unique=True))
        return draw(st.sampled_from([states, tuple(states)]))

    return Genotype(normal=cell(), normal_concat=concat(), reduce=cell(), reduce_concat=concat())


def swap_within_nodes(genotype: Genotype, mask: list[bool]) -> Genotype:
    """The same architecture with the two edges of some nodes written in the other order."""

    def swap(edges: Any) -> list[tuple[str, int]]:
        out = list(edges)
        for node, flip in enumerate(mask[: len(out) // 2]):
            if flip:
                out[2 * node], out[2 * node + 1] = out[2 * node + 1], out[2 * node]
        return out

    return genotype._replace(normal=swap(genotype.normal), reduce=swap(genotype.reduce))


def as_plain(genotype: Genotype) -> Genotype:
    """The genotype with lists of tuples and list concat (what the JSON round-trip returns)."""
    return Genotype(
        normal=[tuple(edge) for edge in genotype.normal],  # type: ignore[misc]
        normal_concat=list(genotype.normal_concat),
        reduce=[tuple(edge) for edge in genotype.reduce],  # type: ignore[misc]
        reduce_concat=list(genotype.reduce_concat),
    )


# ---- presets --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_loads_unchanged_and_validates(name: str) -> None:
    loaded = load_genotype(name)
    assert loaded is PRESETS[name]
    validate_genotype(loaded)
    assert num_nodes(loaded) == len(loaded.reduce) // 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name: str) -> None:
    preset = PRESETS[name]
    back = genotype_from_json(genotype_to_json(preset))
    assert back == as_plain(preset)
    assert genotype_hash(back) == genotype_hash(preset)


def test_presets_hash_apart_and_aliases_hash_equal() -> None:
    assert genotype_hash(PRESETS["DARTS"]) == genotype_hash(PRESETS["DARTS_V2"])
    distinct = {genotype_hash(PRESETS[name]) for name in ("DARTS_V1", "DARTS_V2", "PC_DARTS")}
    assert len(distinct) == 3


# ---- JSON and dict --------------------------------------------------------------------------


@FAST
@given(genotypes())
def test_json_round_trip_gives_tuples_and_lists(genotype: Genotype) -> None:
    text = genotype_to_json(genotype)
    data = json.loads(text)
    assert list(data) == ["normal", "normal_concat", "reduce", "reduce_concat"]
    assert all(isinstance(edge, list) and len(edge) == 2 for edge in data["normal"])
    back = genotype_from_json(text)
    assert back == as_plain(genotype)
    assert all(isinstance(edge, tuple) for edge in [*back.normal, *back.reduce])
    assert genotype_from_dict(genotype_to_dict(genotype)) == back


def test_range_concat_becomes_list() -> None:
    genotype = Genotype([("skip_connect", 0)] * 2, range(2, 3), [("skip_connect", 1)] * 2, [2])
    assert genotype_to_dict(genotype)["normal_concat"] == [2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object"),
        ({"normal": [], "normal_concat": [2], "reduce": []}, "missing field.*reduce_concat"),
        ({"normal": [], **EMPTY, "x": 1}, "unknown field.*x"),
        ({"normal": "sep", **EMPTY}, "normal: expected a list"),
        ({"normal": [["a", 0, 1]], **EMPTY}, "normal edge 0: expected an .op, input. pair"),
        ({"normal": [[3, 0]], **EMPTY}, "normal edge 0: op must be a string"),
        ({"normal": [["skip_connect", True]], **EMPTY}, "normal edge 0: input must be an integer"),
        (
            {"normal": [], **EMPTY, "normal_concat": [2.0]},
            "normal_concat: state index must be an integer",
        ),
        ({"normal": [], **EMPTY, "normal_concat": "2345"}, "normal_concat: expected a list"),
    ],
)
def test_from_dict_rejects_bad_structure(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        genotype_from_dict(data)


def test_from_json_rejects_invalid_json() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        genotype_from_json("{not json")


# ---- canonical form and hash ----------------------------------------------------------------


@FAST
@given(genotypes(), st.lists(st.booleans(), min_size=5, max_size=5))
def test_canonical_is_idempotent_and_order_free(genotype: Genotype, mask: list[bool]) -> None:
    canon = canonical_genotype(genotype)
    assert canonical_genotype(canon) == canon
    assert canonical_genotype(swap_within_nodes(genotype, mask)) == canon
    assert list(canon.normal_concat) == sorted(genotype.normal_concat)
    for cell in ("normal", "reduce"):
        edges, canon_edges = list(getattr(genotype, cell)), list(getattr(canon, cell))
        for k in range(0, len(edges), 2):
            pair = canon_edges[k : k + 2]
            assert sorted(pair) == sorted(edges[k : k + 2])  # same edges per node
            assert (pair[0][1], pair[0][0]) <= (pair[1][1], pair[1][0])  # sorted by (input, op)
    validate_genotype(canon)


@FAST
@given(genotypes(), st.lists(st.booleans(), min_size=5, max_size=5))
def test_hash_is_16_hex_and_ignores_order_within_nodes(
    genotype: Genotype, mask: list[bool]
) -> None:
    digest = genotype_hash(genotype)
    assert HEX16.fullmatch(digest)
    assert genotype_hash(swap_within_nodes(genotype, mask)) == digest
    assert genotype_hash(canonical_genotype(genotype)) == digest


@FAST
@given(genotypes(max_nodes=2), genotypes(max_nodes=2))
def test_hash_differs_for_different_architectures(first: Genotype, second: Genotype) -> None:
    same = canonical_genotype(first) == canonical_genotype(second)
    assert (genotype_hash(first) == genotype_hash(second)) == same


def test_hash_is_stable_across_processes() -> None:
    names = sorted(PRESETS)
    code = (
        "import json; from cnas_hpc.space.genotype import PRESETS, genotype_hash; "
        f"print(json.dumps([genotype_hash(PRESETS[n]) for n in {names!r}]))"
    )
    here = [genotype_hash(PRESETS[name]) for name in names]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        assert json.loads(out.stdout) == here


def test_canonical_rejects_odd_edges() -> None:
    with pytest.raises(ValueError, match="normal cell has 3 edges"):
        canonical_genotype(Genotype([("skip_connect", 0)] * 3, [2], [], [2]))


# ---- validation -----------------------------------------------------------------------------


@FAST
@given(genotypes())
def test_random_valid_genotypes_validate(genotype: Genotype) -> None:
    validate_genotype(genotype)
    used = {op for op, _ in [*genotype.normal, *genotype.reduce]}
    validate_genotype(genotype, ops=sorted(used))


def _base() -> Genotype:
    # Two nodes per cell; every mutation below breaks exactly one rule.
    return two_node_genotype()


def _set_edge(cell: str, k: int, edge: tuple[str, int]) -> Callable[[Genotype], Genotype]:
    def mutate(genotype: Genotype) -> Genotype:
        edges = list(getattr(genotype, cell))
        edges[k] = edge
        return genotype._replace(**{cell: edges})

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g: g._replace(normal=g.normal[:3]), "normal cell has 3 edges; expected an even"),
        (lambda g: g._replace(reduce=[]), "reduce cell has 0 edges; expected an even"),
        (_set_edge("normal", 1, ("conv_7x7", 1)), "normal node 2 edge 1: unknown op 'conv_7x7'"),
        (_set_edge("reduce", 2, ("none", 0)), "reduce node 3 edge 0: op 'none' cannot be kept"),
        (_set_edge("normal", 0, ("sep_conv_3x3", 2)), "normal node 2 edge 0: input 2 out of range"),
        (_set_edge("normal", 3, ("skip_connect", 3)), "normal node 3 edge 1: input 3 out of range"),
        (
            _set_edge("reduce", 0, ("skip_connect", -1)),
            "reduce node 2 edge 0: input -1 out of range",
        ),
        (lambda g: g._replace(normal_concat=[]), "normal_concat is empty"),
        (lambda g: g._replace(reduce_concat=[2, 3, 3]), "reduce_concat .* duplicated"),
        (lambda g: g._replace(normal_concat=[1, 2]), "normal_concat: state 1 out of range"),
        (lambda g: g._replace(normal_concat=[2, 4]), "normal_concat: state 4 out of range"),
        (
            lambda g: g._replace(reduce=[*g.reduce, ("skip_connect", 0), ("skip_connect", 1)]),
            "normal cell has 2 nodes but reduce cell has 3",
        ),
        (lambda g: tuple(g), "expected a Genotype"),
    ],
)
def test_validate_names_the_problem(mutate: Callable[[Genotype], Any], message: str) -> None:
    genotype = _base()
    validate_genotype(genotype)  # the base is valid: the mutation alone causes the error
    with pytest.raises(ValueError, match=message):
        validate_genotype(mutate(genotype))


def test_validate_restricts_ops_when_given() -> None:
    genotype = _base()
    with pytest.raises(ValueError, match="op 'avg_pool_3x3' is not allowed"):
        validate_genotype(genotype, ops=["sep_conv_3x3", "skip_connect", "max_pool_3x3"])
    validate_genotype(genotype, ops=EDGE_OPS)


# ---- load_genotype --------------------------------------------------------------------------


@FAST
@given(genotypes())
def test_load_from_json_string(genotype: Genotype) -> None:
    assert load_genotype(genotype_to_json(genotype)) == as_plain(genotype)


def test_load_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "arch.json"
    path.write_text(genotype_to_json(PRESETS["PC_DARTS"]), encoding="utf-8")
    assert load_genotype(str(path)) == as_plain(PRESETS["PC_DARTS"])


def test_load_names_the_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(genotype_to_dict(_base())).replace("avg_pool_3x3", "x"), "utf-8")
    with pytest.raises(ValueError, match=r"bad\.json: normal node 3 edge 1: unknown op 'x'"):
        load_genotype(str(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("DARTS_V3", "unknown genotype 'DARTS_V3': not a preset"),
        ("missing/arch.json", "genotype file not found: missing/arch.json"),
        ("{broken", "invalid JSON"),
        ('{"normal": []}', "missing field"),
    ],
)
def test_load_rejects_unknown_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_genotype(spec)


def test_load_validates_json_strings() -> None:
    bad = _base()._replace(normal_concat=[9])
    with pytest.raises(ValueError, match="normal_concat: state 9 out of range"):
        load_genotype(genotype_to_json(bad))
