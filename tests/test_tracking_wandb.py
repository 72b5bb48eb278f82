"""W&B tracking in offline mode, read back with wandb's own reader (``wandb leet inspect``).

No W&B server is needed: every run is written offline under ``tmp_path`` and its ``.wandb``
transaction log is read back record by record with ``wandb leet inspect --json`` (the supported
reader of wandb 0.31), so the tests see exactly what ``wandb sync`` would upload.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from cnas_hpc.analysis.study_view import StudyViewObserver, log_study_view, study_view_trigger
from cnas_hpc.cli.search import make_observers
from cnas_hpc.common import attrs
from cnas_hpc.config import Settings
from cnas_hpc.config.wandb import WandbConfig
from cnas_hpc.search import trial as trial_module
from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.search.worker import WorkerError, run_worker
from cnas_hpc.space.genotype import (
    DARTS_V1,
    DARTS_V2,
    PC_DARTS,
    Genotype,
    genotype_from_dict,
    genotype_to_json,
)
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from cnas_hpc.tracking.progress import SearchProgress
from cnas_hpc.tracking.wandb_runs import STUDY_JOB_TYPE, TRIAL_JOB_TYPE, safe_hparams
from cnas_hpc.tracking.wandb_tracker import WandbTracker
from tests.helpers import CONFIGS, ROOT, tiny_settings
from tests.mo_studies import SCORE_PARAMS, make_study
from tests.wandb_offline import OfflineRun, offline_runs

LOGGER = "cnas_hpc.tracking.wandb_tracker"


# ---- reading offline runs back -----------------------------------------------------------


def by_name(runs: list[OfflineRun]) -> dict[str, OfflineRun]:
    names = [r.name for r in runs]
    assert len(set(names)) == len(names), names
    return {r.name: r for r in runs}


def with_wandb(settings: Settings, cfg: WandbConfig) -> Settings:
    """``settings`` with ``cfg`` as its W&B section.

    Works before and after ``Settings`` gets its ``wandb`` field (the lead adds it to config.py).
    """
    if any(f.name == "wandb" for f in dataclasses.fields(settings)):
        changes: dict[str, Any] = {"wandb": cfg}
        return dataclasses.replace(settings, **changes)
    object.__setattr__(settings, "wandb", cfg)
    return settings


def trial_info(number: int = 7, **overrides: Any) -> TrialInfo:
    values: dict[str, Any] = {
        "study_name": "wb-study",
        "number": number,
        "genotype": DARTS_V2,
        "params": {"normal/2_0": "sep_conv_3x3"},
        "worker": "slurm:1234_5",
        "worker_index": 5,
        "world_size": 1,
        "array_job_id": "1234",
        "array_task_id": 5,
        "hparams": {"train.epochs": 4, "train.lr": 0.1},
        **overrides,
    }
    return TrialInfo(**values)


def plain_settings(tmp_path: Path) -> Settings:
    """Settings for direct tracker calls (nothing is trained)."""
    return tiny_settings(tmp_path, "search.n_trials=3")


def direct_tracker(tmp_path: Path, root: Path) -> WandbTracker:
    """An offline tracker for direct calls (trial runs only: study views are not its job)."""
    return WandbTracker(plain_settings(tmp_path), WandbConfig(mode="offline", dir=str(root)))


# ---- the config group --------------------------------------------------------------------


def test_wandb_config_validates_every_field() -> None:
    assert WandbConfig().mode == "disabled" and not WandbConfig().enabled
    with pytest.raises(ValueError, match=r"wandb\.mode must be one of"):
        WandbConfig(mode="cloud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"wandb\.project"):
        WandbConfig(project=" ")
    with pytest.raises(ValueError, match=r"wandb\.tags"):
        WandbConfig(tags="a,b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"wandb\.study_view_every"):
        WandbConfig(study_view_every=-1)
    with pytest.raises(ValueError, match=r"wandb\.study_view_every"):
        WandbConfig(study_view_every=True)
    with pytest.raises(ValueError, match=r"wandb\.entity"):
        WandbConfig(entity="")


@pytest.mark.parametrize("mode", ["disabled", "offline", "online"])
def test_each_yaml_of_the_group_is_a_valid_config(mode: str) -> None:
    text = (CONFIGS / "wandb" / f"{mode}.yaml").read_text()
    values: dict[str, Any] = dict(OmegaConf.to_container(OmegaConf.create(text)))  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    cfg = WandbConfig(**kwargs)
    assert cfg.mode == mode
    if mode == "offline":
        assert "CLUSTER DEFAULT" in text and "wandb sync" in text


def test_hparams_are_masked_again_and_nested() -> None:
    nested = safe_hparams(
        {
            "study.storage": "postgresql+psycopg2://cnas:hunter2@db:5432/cnas",
            "local.api_key": "abc",
            "train.lr": 0.1,
            "seed": 3,
        }
    )
    assert nested["study"]["storage"] == "postgresql+psycopg2://cnas:***@db:5432/cnas"
    assert nested["local"]["api_key"] == "***"
    assert nested["train"] == {"lr": 0.1} and nested["seed"] == 3


def test_trackers_follow_the_mode_and_the_module_imports_no_wandb(tmp_path: Path) -> None:
    settings = plain_settings(tmp_path)
    study = optuna.create_study()
    (progress,) = make_observers(settings, study)
    assert isinstance(progress, SearchProgress)
    offline = with_wandb(settings, WandbConfig(mode="offline", dir=str(tmp_path / "wb")))
    _, tracker, view = make_observers(offline, study)
    assert isinstance(tracker, WandbTracker) and tracker.root == tmp_path / "wb"
    assert isinstance(view, StudyViewObserver)
    # wandb is imported only when a run is written, never by importing the tracker.
    code = (
        "import sys, cnas_hpc.tracking.wandb_tracker; "
        "bad = {'wandb'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# ---- a real search -----------------------------------------------------------------------


def test_a_search_writes_one_offline_run_per_trial_and_a_study_view(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "wb"
    monkeypatch.setenv("WANDB_DATA_DIR", str(root / "data"))  # tables' staging, not ~/.local
    settings = with_wandb(
        tiny_settings(tmp_path, "search.n_trials=3", "train.log_every_steps=1"),
        WandbConfig(mode="offline", dir=str(root), tags=("ci",)),
    )
    bootstrap_study(settings)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert run_worker(settings, observers=partial(make_observers, settings)).completed == 3
    study = load_study(settings, worker=0).study
    runs = offline_runs(root)
    trials = by_name([r for r in runs if r.job_type == TRIAL_JOB_TYPE])
    assert sorted(trials) == [f"trial-{t.number}" for t in study.trials]
    for t in study.trials:
        run = trials[f"trial-{t.number}"]
        assert run.group == settings.study.name and run.exit_code == 0
        assert {"ci", f"trial-{t.number}"} <= set(run.tags)
        assert (run.config["trial"], run.config["segment"], run.config["start_epoch"]) == (
            t.number,
            0,
            0,
        )
        assert (
            genotype_to_json(genotype_from_dict(run.config["genotype"]))
            == (t.user_attrs[attrs.GENOTYPE])
        )
        assert run.config["params"] == t.params
        assert run.config["worker"]["label"] == t.user_attrs[attrs.WORKER]
        assert run.config["hparams"]["train"]["log_every_steps"] == 1
        # per step: loss, lr, throughput and memory against the true step
        steps = run.series("train/step")
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2
        for key in ("train/loss", "train/lr", "train/images_per_s", "train/memory_mb"):
            assert len(run.series(key)) == len(steps), key
        assert all(v > 0 for v in run.series("train/images_per_s"))
        # per epoch: the objective against the (1-based) epoch
        assert run.series("epoch") == list(range(1, settings.train.epochs + 1))
        assert run.series("epoch/objective")[-1] == pytest.approx(t.value)
        summary = run.summary
        assert summary["state"] == "COMPLETE" and summary["value"] == pytest.approx(t.value)
        assert summary["n_params"] == t.user_attrs[attrs.N_PARAMS]
        assert summary["macs"] == t.user_attrs[attrs.MACS]
        assert summary["wall_s"] > 0
    views = [r for r in runs if r.job_type == STUDY_JOB_TYPE]
    assert views and all(v.group == settings.study.name and v.exit_code == 0 for v in views)
    latest = max(views, key=lambda v: v.config["snapshot"])
    # The budget's last completion always writes a view: the latest one shows the whole study.
    assert latest.config["snapshot"] == 3 and latest.summary["n_complete"] == 3
    assert latest.config["written_by"].startswith("local:")  # the worker that finished it
    assert latest.summary["best_trial"] == study.best_trial.number
    assert latest.series("trial_number") == [t.number for t in study.trials]
    assert latest.series("by_trial/best")[-1] == pytest.approx(study.best_value)
    assert latest.series("by_time/best")[-1] == pytest.approx(study.best_value)
    top_k = json.loads((latest.folder / "files" / latest.summary["top_k.path"]).read_text())
    assert top_k["data"][0][top_k["columns"].index("trial")] == study.best_trial.number
    genotype_json = top_k["data"][0][top_k["columns"].index("genotype")]
    assert genotype_json == study.best_trial.user_attrs[attrs.GENOTYPE]
    for key in ("best/normal_cell", "best/reduce_cell", "plots/history", "plots/best_vs_time"):
        assert (latest.folder / "files" / latest.summary[f"{key}.path"]).stat().st_size > 0, key
    # offline: the upload command is logged; nothing wandb prints reaches a non-TTY log
    assert "wandb sync" in caplog.text
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "\x1b" not in out + err and "wandb:" not in out + err


def test_a_failed_trial_finishes_its_run_with_state_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("cell has no path to the output")  # a bug: FAIL (diverging is PRUNED)

    monkeypatch.setattr(trial_module, "train_candidate", broken)
    root = tmp_path / "wb"
    settings = with_wandb(
        tiny_settings(tmp_path, "search.n_trials=1", "search.max_consecutive_failures=1"),
        WandbConfig(mode="offline", dir=str(root)),
    )
    bootstrap_study(settings)
    with pytest.raises(WorkerError):
        run_worker(settings, observers=partial(make_observers, settings))
    (run,) = offline_runs(root)  # no study view for a failure
    assert run.name == "trial-0" and run.job_type == TRIAL_JOB_TYPE
    assert run.summary["state"] == "FAIL" and "value" not in run.summary
    assert "cell has no path" in run.summary["fail_reason"]
    assert run.exit_code == 1  # finished, and a failed run for W&B's own filters


def test_a_resumed_trial_writes_a_segment_run_with_the_true_epochs(tmp_path: Path) -> None:
    root = tmp_path / "wb"
    tracker = direct_tracker(tmp_path, root)
    tracker.trial_started(trial_info(7), n_params=100, macs=1000)
    for epoch in (1, 2):
        tracker.step(epoch * 10, {"loss": 1.0 / epoch, "lr": 0.1})
        tracker.epoch(epoch, {"train_loss": 1.0 / epoch, "val_loss": None, "objective": 0.5})
    tracker.trial_finished("INTERRUPTED", None, {"wall_s": 3.0})  # preempted after epoch 2
    tracker.trial_started(trial_info(7, segment=1, start_epoch=2), n_params=100, macs=1000)
    for epoch in (3, 4):
        tracker.step(epoch * 10, {"loss": 1.0 / epoch, "lr": 0.1})
        tracker.epoch(epoch, {"train_loss": 1.0 / epoch, "objective": 0.25})
    tracker.trial_finished("COMPLETE", 0.25, {"wall_s": 2.0, "resumed_from_epoch": 2})
    runs = by_name([r for r in offline_runs(root) if r.job_type == TRIAL_JOB_TYPE])
    assert sorted(runs) == ["trial-7", "trial-7-seg1"]
    first, second = runs["trial-7"], runs["trial-7-seg1"]
    assert first.summary["state"] == "INTERRUPTED" and first.exit_code == 0
    assert second.summary["state"] == "COMPLETE" and second.summary["value"] == 0.25
    assert (second.config["trial"], second.config["segment"], second.config["start_epoch"]) == (
        7,
        1,
        2,
    )
    assert "trial-7" in first.tags and "trial-7" in second.tags and "seg1" in second.tags
    assert first.series("epoch") == [1, 2] and second.series("epoch") == [3, 4]
    assert second.series("train/step") == [30, 40]
    assert sorted(first.series("epoch") + second.series("epoch")) == [1, 2, 3, 4]
    assert "val_loss" not in json.dumps(first.history)  # None values are not logged


def test_no_secret_reaches_any_file_wandb_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password, env_secret, argv_secret = "Pg-s3cret-in-url", "Pg-s3cret-env", "Pg-s3cret-argv"
    monkeypatch.setenv("PGPASSWORD", env_secret)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    # wandb's metadata records sys.argv: a Hydra override can carry a storage URL.
    monkeypatch.setattr(sys, "argv", [sys.argv[0], f"study.storage=postgresql://u:{argv_secret}@h"])
    storage = f"postgresql+psycopg2://cnas:{password}@db.example:5432/cnas"
    info = trial_info(3, hparams={"study.storage": storage, "study.password": password})
    root = tmp_path / "wb"
    tracker = direct_tracker(tmp_path, root)
    tracker.trial_started(info, n_params=1, macs=1)
    tracker.epoch(1, {"objective": 0.5})
    tracker.trial_finished("COMPLETE", 0.5, {"wall_s": 1.0})
    (run,) = offline_runs(root)
    assert run.config["hparams"]["study"]["storage"] == (
        "postgresql+psycopg2://cnas:***@db.example:5432/cnas"
    )
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in (password, env_secret, argv_secret, "f" * 40):
            assert secret.encode() not in data, f"{secret} leaked into {path}"


def test_wandb_errors_never_stop_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    calls = {"n": 0}

    def rate_limited(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        raise wandb.errors.CommError("429 Too Many Requests")

    monkeypatch.setattr(wandb, "init", rate_limited)
    root = tmp_path / "wb"
    settings = with_wandb(
        tiny_settings(tmp_path, "search.n_trials=1"), WandbConfig(mode="offline", dir=str(root))
    )
    bootstrap_study(settings)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert run_worker(settings, observers=partial(make_observers, settings)).completed == 1
    assert calls["n"] == 2  # the trial's run and the study view were both tried
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("W&B init failed" in m and "429" in m for m in warnings), warnings
    assert not list((root / "wandb").glob("offline-run-*"))
    # A tracker whose init failed is off for that trial and warns once, not per call.
    caplog.clear()
    tracker = WandbTracker(settings)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for number in (5, 6):
            tracker.trial_started(trial_info(number), n_params=1, macs=1)
            tracker.step(1, {"loss": 1.0})
            tracker.trial_finished("FAIL", None, {})
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]


# ---- the study view on its own -----------------------------------------------------------


def _study_with(values: list[float], genotypes: list[Genotype]) -> optuna.Study:
    study = optuna.create_study(study_name="view-study", direction="minimize")
    study.set_user_attr(attrs.STUDY_OBJECTIVE, "val_contrastive_loss")
    for value, genotype in zip(values, genotypes, strict=True):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=value,
                params={"x": "a"},
                distributions={"x": CategoricalDistribution(["a", "b"])},
                user_attrs={attrs.GENOTYPE: genotype_to_json(genotype), attrs.WORKER: "w0"},
            )
        )
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    return study


def test_study_view_triggers_on_new_best_every_k_and_the_end() -> None:
    study = _study_with([3.0, 5.0, 2.0, 4.0], [DARTS_V1, DARTS_V2, PC_DARTS, DARTS_V1])
    assert [study_view_trigger(study, n, n_trials=10) for n in range(4)] == [
        "new_best",
        None,
        "new_best",
        None,
    ]
    assert study_view_trigger(study, 1, every=2, n_trials=10) == "every_k"
    assert study_view_trigger(study, 3, n_trials=4) == "final"
    assert study_view_trigger(study, 4, n_trials=4) is None  # FAIL: never
    assert study_view_trigger(study, 99) is None


def test_log_study_view_on_demand_writes_a_self_contained_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    study = _study_with([3.0, 5.0, 2.0], [DARTS_V1, DARTS_V2, PC_DARTS])
    settings = plain_settings(tmp_path)
    assert log_study_view(study, settings) is None  # disabled: nothing written
    root = tmp_path / "wb"
    folder = log_study_view(
        study, settings, config=WandbConfig(mode="offline", dir=str(root)), top_k=2
    )
    assert folder is not None
    (run,) = offline_runs(root)
    assert run.folder == folder and run.name == "study-view-3" and run.group == "view-study"
    assert (run.job_type, run.config["trigger"], run.config["snapshot"]) == (
        STUDY_JOB_TYPE,
        "on_demand",
        3,
    )
    assert run.series("by_trial/objective") == [3.0, 5.0, 2.0]
    assert run.series("by_trial/best") == [3.0, 3.0, 2.0]
    assert run.summary["best_trial"] == 2 and run.summary["n_fail"] == 1
    top_k = json.loads((folder / "files" / run.summary["top_k.path"]).read_text())
    trials = [row[top_k["columns"].index("trial")] for row in top_k["data"]]
    assert trials == [2, 0]
    best = top_k["data"][0][top_k["columns"].index("genotype")]
    assert best == genotype_to_json(PC_DARTS)
    history = json.loads((folder / "files" / run.summary["history.path"]).read_text())
    assert len(history["data"]) == 3


def test_the_study_view_of_a_multi_objective_study_follows_its_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    study = make_study(None, "view-mo", ("val_contrastive_loss", "params"),
                       ("minimize", "minimize"), SCORE_PARAMS)  # fmt: skip
    # Trial 3 (score 3.0) is the best feasible one; trial 6 (1.0) broke the limit.
    assert [study_view_trigger(study, n) for n in (0, 1, 3)] == ["new_best"] * 3
    assert study_view_trigger(study, 6) is None and study_view_trigger(study, 4) is None
    root = tmp_path / "wb"
    folder = log_study_view(study, plain_settings(tmp_path),
                            config=WandbConfig(mode="offline", dir=str(root)))  # fmt: skip
    assert folder is not None
    (run,) = offline_runs(root)
    assert run.config["objective"] == "val_contrastive_loss"
    assert run.series("by_trial/objective") == [5.0, 4.0, 4.5, 3.0, 3.5, 5.5, 1.0]
    assert run.summary["best_trial"] == 3 and run.summary["best_value"] == 3.0
