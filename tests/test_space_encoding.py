"""Tests of cnas_hpc.space.encoding: trial params <-> genotype <-> compact tuple."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from math import comb
from typing import Any

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.samplers import RandomSampler
from optuna.trial import FixedTrial

from cnas_hpc.space.encoding import (
    FALLBACK_OP,
    CellEncoding,
    CompactEncoding,
    CsnasEncoding,
    compact_hash,
    from_compact,
    make_encoding,
    to_compact,
)
from cnas_hpc.space.genotype import (
    DARTS_V2,
    Genotype,
    canonical_genotype,
    genotype_to_json,
    num_nodes,
    validate_genotype,
)
from cnas_hpc.space.primitives import CELL_KINDS, EDGE_OPS, PRIMITIVES
from tests.helpers import two_node_genotype

FAST = settings(max_examples=100, deadline=None)

#: (encoding, n_nodes, concat_last, ops): both encodings, n_nodes in {1, 4, 5}, plus a
#: restricted op set without max_pool_3x3 (the csnas fallback then takes the first op).
SPACES = [
    (name, n_nodes, concat_last, ops)
    for name in ("compact", "csnas")
    for n_nodes, concat_last, ops in [
        (1, None, None),
        (4, None, None),
        (5, 4, None),
        (4, 2, ("sep_conv_5x5", "skip_connect")),
    ]
]
SPACE_IDS = [f"{name}-n{n}-last{last}-{'sub' if ops else 'all'}" for name, n, last, ops in SPACES]


def build(space: tuple[str, int, int | None, tuple[str, ...] | None]) -> CellEncoding:
    name, n_nodes, concat_last, ops = space
    return make_encoding(name, n_nodes=n_nodes, concat_last=concat_last, ops=ops)


def draw_params(data: st.DataObject, encoding: CellEncoding) -> dict[str, Any]:
    """A random complete assignment, each value drawn from its distribution's choices."""
    return data.draw(
        st.fixed_dictionaries(
            {name: st.sampled_from(dist.choices) for name, dist in encoding.distributions().items()}
        )
    )


@st.composite
def expressible_genotypes(draw: st.DrawFn, encoding: CellEncoding) -> Genotype:
    """Random genotypes of the encoding's space, edges in any order within a node."""

    def cell() -> list[tuple[str, int]]:
        edges: list[tuple[str, int]] = []
        for node in encoding.nodes:
            inputs = draw(st.lists(st.integers(0, node - 1), min_size=2, max_size=2, unique=True))
            edges += [(draw(st.sampled_from(encoding.ops)), index) for index in inputs]
        return edges

    concat = draw(st.permutations(encoding.concat))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def assert_canonical_and_valid(genotype: Genotype, encoding: CellEncoding) -> None:
    validate_genotype(genotype, ops=encoding.ops)
    assert num_nodes(genotype) == encoding.n_nodes
    assert genotype == canonical_genotype(genotype)
    assert genotype_to_json(genotype) == genotype_to_json(canonical_genotype(genotype))
    assert tuple(genotype.normal_concat) == tuple(genotype.reduce_concat) == encoding.concat


# ---- the space ------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
def test_distributions_are_hierarchical_and_stable(space: Any) -> None:
    encoding = build(space)
    dists = encoding.distributions()
    assert list(dists) == list(build(space).distributions())
    for name in dists:
        cell, node_part, _ = name.split("/")
        assert cell in CELL_KINDS
        assert re.fullmatch(r"n\d+", node_part)
        assert 2 <= int(node_part[1:]) <= encoding.n_nodes + 1
    # Cells, then nodes, in order.
    keys = [(CELL_KINDS.index(n.split("/")[0]), int(n.split("/")[1][1:])) for n in dists]
    assert keys == sorted(keys)
    if isinstance(encoding, CompactEncoding):
        assert len(dists) == 2 * 3 * encoding.n_nodes
        for node in encoding.nodes:
            assert len(dists[f"normal/n{node}/inputs"].choices) == comb(node, 2)
            assert dists[f"reduce/n{node}/op0"].choices == encoding.ops
        assert all("none" not in d.choices for n, d in dists.items() if n.endswith(("op0", "op1")))
    else:
        assert len(dists) == 2 * sum(encoding.nodes)
        assert all(d.choices == ("none", *encoding.ops) for d in dists.values())


def test_defaults_match_darts_and_reference() -> None:
    compact = make_encoding("compact")
    assert (compact.n_nodes, compact.ops, compact.concat) == (4, EDGE_OPS, (2, 3, 4, 5))
    reference = make_encoding("csnas", n_nodes=5, concat_last=4)
    assert reference.concat == (3, 4, 5, 6)
    assert len(reference.distributions()) == 40  # the paper's 40 dimensions
    assert all(len(d.choices) == len(PRIMITIVES) for d in reference.distributions().values())


def test_ops_are_kept_in_primitives_order() -> None:
    encoding = make_encoding("compact", ops=["skip_connect", "max_pool_3x3", "dil_conv_5x5"])
    assert encoding.ops == ("max_pool_3x3", "skip_connect", "dil_conv_5x5")
    csnas = make_encoding("csnas", ops=["sep_conv_3x3", "none"])
    assert csnas.ops == ("sep_conv_3x3",)  # 'none' is always a csnas choice anyway


def test_fingerprint_is_json_and_tells_spaces_apart() -> None:
    variants = [
        make_encoding("compact"),
        make_encoding("csnas"),
        make_encoding("compact", n_nodes=5),
        make_encoding("compact", concat_last=3),
        make_encoding("compact", ops=["skip_connect"]),
    ]
    texts = [json.dumps(v.fingerprint(), sort_keys=True) for v in variants]
    assert len(set(texts)) == len(texts)
    assert make_encoding("compact").fingerprint() == make_encoding("compact").fingerprint()
    assert json.loads(texts[0])["name"] == "compact"


# ---- round-trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@FAST
@given(data=st.data())
def test_random_params_round_trip(space: Any, data: st.DataObject) -> None:
    encoding = build(space)
    params = draw_params(data, encoding)
    genotype = encoding.from_params(params)
    assert_canonical_and_valid(genotype, encoding)
    canonical_params = encoding.to_params(genotype)
    assert encoding.from_params(canonical_params) == genotype
    assert encoding.to_params(encoding.from_params(canonical_params)) == canonical_params
    if isinstance(encoding, CompactEncoding):
        assert canonical_params == params  # bijective: nothing to canonicalise
    compact = to_compact(genotype)
    assert from_compact(compact, concat=encoding.concat) == genotype
    assert to_compact(from_compact(compact)) == compact


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@FAST
@given(data=st.data())
def test_genotype_to_params_round_trip(space: Any, data: st.DataObject) -> None:
    encoding = build(space)
    genotype = data.draw(expressible_genotypes(encoding))
    params = encoding.to_params(genotype)
    assert set(params) == set(encoding.distributions())
    assert encoding.from_params(params) == canonical_genotype(genotype)
    assert compact_hash(encoding.from_params(params)) == compact_hash(genotype)


@pytest.mark.parametrize("space", SPACES, ids=SPACE_IDS)
@pytest.mark.parametrize("seed", range(5))
def test_suggest_with_a_real_trial(space: Any, seed: int) -> None:
    encoding = build(space)
    study = optuna.create_study(sampler=RandomSampler(seed=seed))
    trial = study.ask()
    genotype = encoding.suggest(trial)
    assert_canonical_and_valid(genotype, encoding)
    assert trial.distributions == encoding.distributions()
    assert encoding.from_params(trial.params) == genotype
    if isinstance(encoding, CompactEncoding):
        assert trial.params == encoding.to_params(genotype)
    study.tell(trial, 0.0)
    # A FixedTrial replays the canonical params (what enqueueing a known genotype does).
    assert encoding.suggest(FixedTrial(encoding.to_params(genotype))) == genotype


@pytest.mark.parametrize("name", ["compact", "csnas"])
def test_darts_v2_survives_as_its_canonical_form(name: str) -> None:
    encoding = make_encoding(name)
    decoded = encoding.from_params(encoding.to_params(DARTS_V2))
    assert decoded == canonical_genotype(DARTS_V2)
    assert decoded != DARTS_V2  # DARTS_V2 lists some nodes' edges out of input order
    assert sorted(decoded.normal) == sorted(DARTS_V2.normal)


def test_compact_hash_identifies_architectures() -> None:
    swapped = DARTS_V2._replace(normal=[*DARTS_V2.normal[1::-1], *DARTS_V2.normal[2:]])
    assert swapped != DARTS_V2
    digest = compact_hash(DARTS_V2)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert compact_hash(swapped) == digest
    assert compact_hash(DARTS_V2._replace(reduce_concat=[5])) == digest  # concat is not in it
    changed = DARTS_V2._replace(normal=[("skip_connect", 0), *DARTS_V2.normal[1:]])
    assert compact_hash(changed) != digest


def test_compact_form_layout() -> None:
    genotype = Genotype(
        normal=[("skip_connect", 1), ("sep_conv_3x3", 0)],
        normal_concat=[2],
        reduce=[("max_pool_3x3", 0), ("dil_conv_5x5", 1)],
        reduce_concat=[2],
    )
    expected = (
        0,
        PRIMITIVES.index("sep_conv_3x3"),
        1,
        PRIMITIVES.index("skip_connect"),
        0,
        PRIMITIVES.index("max_pool_3x3"),
        1,
        PRIMITIVES.index("dil_conv_5x5"),
    )
    assert to_compact(genotype) == expected


# ---- csnas decoding rules -------------------------------------------------------------------


def csnas_params(encoding: CellEncoding, overrides: dict[str, str]) -> dict[str, Any]:
    params: dict[str, Any] = dict.fromkeys(encoding.distributions(), "none")
    params.update(overrides)
    return params


def test_csnas_all_none_falls_back_to_max_pool_on_lowest_inputs() -> None:
    encoding = make_encoding("csnas", n_nodes=3)
    genotype = encoding.from_params(csnas_params(encoding, {}))
    assert FALLBACK_OP == "max_pool_3x3"
    expected = [(FALLBACK_OP, 0), (FALLBACK_OP, 1)] * 3
    assert list(genotype.normal) == list(genotype.reduce) == expected


def test_csnas_keeps_first_two_non_none_in_input_order() -> None:
    encoding = make_encoding("csnas", n_nodes=3)
    genotype = encoding.from_params(
        csnas_params(
            encoding,
            {
                "normal/n4/e1": "sep_conv_5x5",
                "normal/n4/e2": "skip_connect",
                "normal/n4/e3": "dil_conv_3x3",  # third non-none edge: ignored
                "normal/n3/e2": "avg_pool_3x3",  # one non-none edge: fallback adds input 0
            },
        )
    )
    assert list(genotype.normal) == [
        (FALLBACK_OP, 0),
        (FALLBACK_OP, 1),
        (FALLBACK_OP, 0),
        ("avg_pool_3x3", 2),
        ("sep_conv_5x5", 1),
        ("skip_connect", 2),
    ]


def test_csnas_fallback_skips_kept_input_and_uses_first_op_without_max_pool() -> None:
    encoding = make_encoding("csnas", n_nodes=2, ops=["sep_conv_5x5", "skip_connect"])
    assert isinstance(encoding, CsnasEncoding) and encoding.fallback_op == "skip_connect"
    genotype = encoding.from_params(csnas_params(encoding, {"reduce/n3/e0": "sep_conv_5x5"}))
    assert list(genotype.reduce) == [
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("sep_conv_5x5", 0),
        ("skip_connect", 1),
    ]


def test_csnas_to_params_puts_none_on_every_other_edge() -> None:
    encoding = make_encoding("csnas")
    params = encoding.to_params(DARTS_V2)
    for cell in CELL_KINDS:
        for node in encoding.nodes:
            ops = [params[f"{cell}/n{node}/e{j}"] for j in range(node)]
            assert sum(op != "none" for op in ops) == 2


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "darts"}, "unknown encoding 'darts'; choose one of compact, csnas"),
        ({"name": "compact", "ops": ["conv_7x7"]}, "unknown op 'conv_7x7' in ops"),
        ({"name": "csnas", "ops": []}, "ops must name at least one op"),
        ({"name": "csnas", "ops": ["none"]}, "ops must name at least one op other than 'none'"),
        ({"name": "compact", "ops": []}, "ops must name at least one op"),
        ({"name": "compact", "ops": ["none", "skip_connect"]}, "compact encoding never .*'none'"),
        ({"name": "compact", "ops": "skip_connect"}, "ops must be a list of op names"),
        ({"name": "csnas", "ops": ["skip_connect"] * 2}, "ops lists skip_connect more than once"),
        ({"name": "compact", "n_nodes": 0}, "n_nodes must be an integer >= 1, got 0"),
        ({"name": "csnas", "n_nodes": True}, "n_nodes must be an integer >= 1, got True"),
        ({"name": "compact", "concat_last": 0}, r"concat_last must be in 1\.\.4 .*got 0"),
        ({"name": "csnas", "n_nodes": 5, "concat_last": 6}, r"concat_last must be in 1\.\.5"),
    ],
)
def test_make_encoding_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        make_encoding(name, **kwargs)


@pytest.mark.parametrize("name", ["compact", "csnas"])
def test_from_params_names_missing_unknown_and_bad_values(name: str) -> None:
    encoding = make_encoding(name, n_nodes=2)
    good = encoding.to_params(encoding.from_params(encoding.to_params(two_node_genotype())))
    first = next(iter(encoding.distributions()))
    missing = {k: v for k, v in good.items() if k != first}
    with pytest.raises(ValueError, match=f"lack 1 of .* first '{first}'"):
        encoding.from_params(missing)
    with pytest.raises(ValueError, match=r"unknown parameter.*normal/n9/x"):
        encoding.from_params({**good, "normal/n9/x": "a"})
    with pytest.raises(ValueError, match=f"param '{first}' = 'conv_7x7' is not one of"):
        encoding.from_params({**good, first: "conv_7x7"})


@pytest.mark.parametrize("name", ["compact", "csnas"])
def test_to_params_refuses_what_the_space_cannot_express(name: str) -> None:
    genotype = two_node_genotype()
    make_encoding(name, n_nodes=2).to_params(genotype)  # the base genotype is expressible
    with pytest.raises(ValueError, match=r"genotype has 2 nodes per cell but this \w+ space has 4"):
        make_encoding(name).to_params(genotype)
    with pytest.raises(ValueError, match=r"normal_concat \[2, 3\] differs .* \[3\]"):
        make_encoding(name, n_nodes=2, concat_last=1).to_params(genotype)
    twice = genotype._replace(
        reduce=[*genotype.reduce[:2], ("skip_connect", 1), ("max_pool_3x3", 1)]
    )
    with pytest.raises(ValueError, match="reduce node 3 reads input 1 twice"):
        make_encoding(name, n_nodes=2).to_params(twice)
    with pytest.raises(ValueError, match="op 'avg_pool_3x3' is not allowed"):
        make_encoding(name, n_nodes=2, ops=["sep_conv_3x3", "skip_connect"]).to_params(genotype)
    with pytest.raises(ValueError, match="unknown op 'x'"):
        make_encoding(name, n_nodes=2).to_params(genotype._replace(normal=[("x", 0)] * 4))


@pytest.mark.parametrize(
    ("compact", "message"),
    [
        ((), "compact form has 0 entries"),
        ((0, 1, 1, 1, 0, 1), "compact form has 6 entries"),
        ((0, 1, 1, 8, 0, 1, 1, 1), "op index 8 out of range"),
        ((0, 1, 1, "1", 0, 1, 1, 1), "entries must be integers"),
        ((0, 0, 1, 1, 0, 1, 1, 1), "op 'none' cannot be kept"),
        ((0, 1, 2, 1, 0, 1, 1, 1), "input 2 out of range"),
    ],
)
def test_from_compact_rejects_bad_tuples(compact: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_compact(compact)
