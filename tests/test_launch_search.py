"""``launch/search.py`` end to end, as a user runs it (subprocesses, real SQLite study; the
refusals, which end before any work, in this process: :func:`tests.helpers.run_here`)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from cnas_hpc.cli.search import main as search_main
from tests.helpers import TINY, run_here, run_search

#: One CPU allotted, as to an array task on a shared node: torch runs one thread and the worker
#: measures no thread count per candidate. For the searches whose threads are not what they
#: test (the default search below measures them): ~4 CPU-s less per search on this 2-core VM.
ONE_CPU = {"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "1"}


def complete_trials(home: Path, name: str = "cnas-digits-compact") -> int:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{home}/cnas.db")
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@dataclass(frozen=True)
class Resumed:
    """A default search of 1 trial, then the same command with a budget of 2 (it resumes)."""

    home: Path
    first: subprocess.CompletedProcess[str]
    complete_after_first: int
    second: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Resumed:
    """The study of :class:`Resumed`, which several tests read (a search process each saved)."""
    home = tmp_path_factory.mktemp("search")
    first = run_search([*TINY, "search.n_trials=1"], home=home)
    after_first = complete_trials(home) if first.returncode == 0 else -1
    second = run_search([*TINY, "search.n_trials=2"], home=home)
    return Resumed(home, first, after_first, second)


def test_search_runs_resumes_and_writes_the_best_genotype(resumed: Resumed) -> None:
    first, second, home = resumed.first, resumed.second, resumed.home
    assert first.returncode == 0, first.stderr[-3000:]
    assert resumed.complete_after_first == 1
    assert second.returncode == 0, second.stderr[-3000:]
    assert complete_trials(home) == 2  # resumed: added one, did not start over
    output = second.stdout + second.stderr
    assert "resumed, 1/2 trials complete" in output
    assert "Best genotype" in second.stdout and "Genotype(normal=" in second.stdout
    best = json.loads((home / "cnas-digits-compact" / "best_genotype.json").read_text())
    assert best["study"] == "cnas-digits-compact"
    assert len(best["genotype"]["normal"]) == 8
    # Not a terminal: plain log lines, no progress-bar redraws or escape codes.
    assert "\r" not in output and "\x1b[" not in output
    assert "trial 1: COMPLETE" in output


@pytest.mark.parametrize("objective", ["naswot", "synflow"])
def test_a_zero_cost_search_trains_nothing_and_records_its_proxy(
    tmp_path: Path, objective: str
) -> None:
    name = f"zc-{objective}"
    result = run_search(
        [*TINY, f"search.objective={objective}", "search.n_trials=3", f"study.name={name}"],
        home=tmp_path,
        env=ONE_CPU,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/cnas.db")
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in trials:
        assert trial.value == trial.user_attrs[f"cnas:{objective}"]
        assert "cnas:epochs_done" not in trial.user_attrs  # no contrastive training at all
        assert trial.user_attrs["cnas:n_params"] > 0


def test_a_screened_search_trains_only_what_its_zero_cost_screen_lets_through(
    tmp_path: Path,
) -> None:
    args = [
        *TINY, "search.screen=naswot", "search.screen_startup=2", "search.screen_keep=0.5",
        "search.n_trials=4", "study.name=zc-screen", "study.sampler.n_startup_trials=10",
    ]  # fmt: skip
    result = run_search(args, home=tmp_path, env=ONE_CPU)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="zc-screen", storage=f"sqlite:///{tmp_path}/cnas.db")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    screened = [t for t in study.trials if t.user_attrs.get("cnas:screened")]
    assert len(complete) == 4 and screened  # the budget counts trained trials only
    assert all(t.state == TrialState.PRUNED and "cnas:epochs_done" not in t.user_attrs
               for t in screened)  # fmt: skip
    for trial in screened:  # each was below the median of the proxies seen before it
        earlier = [t.user_attrs["cnas:naswot"] for t in study.trials if t.number < trial.number]
        assert len(earlier) >= 2
        assert trial.user_attrs["cnas:naswot"] < sorted(earlier)[len(earlier) // 2]


def test_a_contrastive_search_records_the_zero_cost_proxies_of_every_trial(
    resumed: Resumed,
) -> None:
    # The default (contrastive) search of the resume test, both of its runs.
    study = optuna.load_study(
        study_name="cnas-digits-compact", storage=f"sqlite:///{resumed.home}/cnas.db"
    )
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        assert {"cnas:naswot", "cnas:synflow", "cnas:zero_cost_s"} <= set(trial.user_attrs)
        assert trial.user_attrs["cnas:epochs_done"] == 1


def test_the_paper_preset_runs_end_to_end_with_tiny_overrides(tmp_path: Path) -> None:
    result = run_search(
        [
            "experiment=csnas_paper",
            "model.cells=3",
            "model.channels=4",
            "data.fraction=0.2",
            "train.epochs=1",
            "train.batch_size=64",
            "train.max_steps_per_epoch=2",
            # One trial: the preset composes, trains and is recorded; a second adds nothing of
            # the preset (~2.5 CPU-s).
            "search.n_trials=1",
        ],
        home=tmp_path,
        env=ONE_CPU,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert complete_trials(tmp_path, "csnas-paper-digits") == 1


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("search.n_trials=-1", "search.n_trials must be an integer > 0"),
        ("space.ops=[conv_9x9]", "conv_9x9"),
        ("data.fraction=2", "data.fraction must be in (0, 1]"),
        ("data=npz", "data.path"),
        ("study.storage=postgresql://nobody@127.0.0.1:1/none", "unreachable"),
        # Hydra's own errors, as one line naming the nearest valid name (no `+key` advice).
        ("data=imagenet", "config group data has no option 'imagenet' (options: cifar10,"),
        ("model=proxy_smal", "did you mean model=proxy_small?"),
        ("search.ntrials=5", "search.ntrials is not a key of the config: did you mean search.n_"),
        ("study.name=a/b", "study.name='a/b' is not a plain name"),
        ("output_dir=/proc/nope", "output_dir=/proc/nope cannot be created"),
        ("model.channels=100000", "needs at least"),  # this host's memory
    ],
)
def test_bad_input_exits_non_zero_with_one_line(tmp_path: Path, override: str, needle: str) -> None:
    # In this process (run_here): a refusal ends before any work; the tests above start the
    # real command.
    result = run_here("search.py", search_main, [*TINY, override], home=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cnas.db").exists()  # nothing written
    assert not (tmp_path / "a").exists() and not (tmp_path / "hydra" / "a").exists()


def test_an_npz_without_images_is_named_as_such(tmp_path: Path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 32, 32, 3), dtype=np.uint8))
    args = [*TINY, "data=npz", f"data.path={empty}"]
    result = run_here("search.py", search_main, args, home=tmp_path)  # a refusal: no process
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: npz file {empty} (data.path) holds 0 images: nothing to search on"
    )
    assert not (tmp_path / "cnas.db").exists()


#: A multirun on the REAL local SLURM cluster (the refusals of what SLURM cannot grant are
#: cases of tests/test_validation.py, which also checks that no job was queued).
SLURM_RUN = ("-m", "hydra/launcher=slurm_cpu", *TINY)


@pytest.mark.slurm
def test_a_rerun_of_a_complete_study_submits_nothing(resumed: Resumed) -> None:
    # The resume test's complete study (2/2). The multirun ends in the submitting process before
    # anything is queued: in this process (run_here).
    assert complete_trials(resumed.home) == 2
    again = run_here(
        "search.py", search_main, [*SLURM_RUN, "search.n_trials=2", "worker=range(2)"],
        home=resumed.home,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study 'cnas-digits-compact' is complete (2/2 trials): nothing submitted" in again.stdout
    assert not list(resumed.home.rglob(".submitit"))  # no array
    assert complete_trials(resumed.home) == 2


def test_a_constrained_multi_objective_search_never_trains_a_cell_over_its_limit(
    tmp_path: Path,
) -> None:
    # The command (12 trials there, 4 here: seconds), tiny proxy, 20 x 36 CIFAR costs.
    result = run_search(
        [
            *TINY,
            "search.objectives=[score,params]",
            "search.constraints=[params<=2.6e6]",  # unquoted, as users write it
            "search.n_trials=4",
            "zero_cost.record=false",
            "study.name=budget",
        ],
        home=tmp_path,
        env=ONE_CPU,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Pareto front of study 'budget'" in result.stdout
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path}/cnas.db")
    assert study.user_attrs["cnas:objectives"] == ["val_contrastive_loss", "params"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    for trial in complete:
        assert trial.values[1] == trial.user_attrs["cnas:cost_params"] <= 2.6e6
        assert trial.user_attrs["cnas:infeasible"] is False
        assert trial.user_attrs["cnas:epochs_done"] == 1
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    for trial in pruned:  # every pruned one broke the limit and was never trained
        assert trial.user_attrs["cnas:infeasible"] is True
        assert trial.user_attrs["cnas:cost_params"] > 2.6e6
        assert trial.system_attrs["constraints"][0] > 0
        assert "cnas:epochs_done" not in trial.user_attrs
    assert {t.number for t in study.best_trials} <= {t.number for t in complete}
    # The printed pick (best mean rank over both objectives) is one of the front's cells.
    pick = re.search(r"Best mean rank over the objectives: trial (\d+) \(mean rank", result.stdout)
    assert pick is not None and int(pick.group(1)) in {t.number for t in study.best_trials}
