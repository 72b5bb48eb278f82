"""The autotuner picks the option that measures fastest, caches it, and reuses the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from cnas_hpc.train.autotune import choose_fastest


def test_the_fastest_option_is_chosen_and_cached(tmp_path: Path) -> None:
    calls = {"slow": 0, "fast": 0}

    def slow() -> None:
        calls["slow"] += 1
        time.sleep(0.02)

    def fast() -> None:
        calls["fast"] += 1

    cpu = torch.device("cpu")
    options = {"slow": slow, "fast": fast}
    workload = {"net": "x", "batch": 4}
    assert choose_fastest(options, cpu, workload=workload, cache_dir=tmp_path, repeat=3) == "fast"
    (cached,) = tmp_path.glob("*.json")
    payload = json.loads(cached.read_text())
    assert payload["choice"] == "fast" and payload["seconds"]["slow"] > payload["seconds"]["fast"]
    before = dict(calls)
    assert choose_fastest(options, cpu, workload=workload, cache_dir=tmp_path) == "fast"
    assert calls == before  # the cache answered: nothing was timed again
    # Another workload is measured anew.
    choose_fastest(options, cpu, workload={"net": "y"}, cache_dir=tmp_path, repeat=1)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_single_option_is_returned_without_timing() -> None:
    def never() -> None:
        raise AssertionError("must not run")

    cpu = torch.device("cpu")
    assert choose_fastest({"only": never}, cpu, workload={}, cache_dir=None) == "only"


def test_an_option_that_fails_is_skipped_and_all_failing_is_not_cached(tmp_path: Path) -> None:
    def broken() -> None:
        raise RuntimeError("no C++ compiler")  # e.g. torch.compile on a bare node

    def works() -> None:
        pass

    cpu = torch.device("cpu")
    options = {"compiled": broken, "eager": works}
    assert choose_fastest(options, cpu, workload={"w": 1}, cache_dir=tmp_path) == "eager"
    # Nothing works: the first option is returned (the real step will report the error), and
    # nothing is remembered, so a later call measures again.
    everything_broken = {"a": broken, "b": broken}
    assert choose_fastest(everything_broken, cpu, workload={"w": 2}, cache_dir=tmp_path) == "a"
    assert len(list(tmp_path.glob("*.json"))) == 1
