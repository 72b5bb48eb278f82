"""The status/report command on a real study: counts, workers, heartbeats, pictures, CLI.

One small real SQLite search (bootstrap_study + run_worker, 3 trials) is shared by the module;
on top of it the tests add what a live search has: a RUNNING trial of a SLURM worker with a
fresh heartbeat, a RUNNING trial whose heartbeat is an hour old (stale), and FAIL trials with
reasons. The status is also checked on PostgreSQL (``postgres`` marker).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib.image
import optuna
import pytest
import sqlalchemy
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from cnas_hpc.analysis.plots import (
    IMPORTANCE_PLACEHOLDER,
    param_importances,
    plot_best_vs_time,
    plot_history,
    plot_importances,
    write_html,
)
from cnas_hpc.analysis.report import (
    StudyStatus,
    collect_status,
    dashboard_command,
    format_status,
    run_report,
)
from cnas_hpc.cli.report import main as report_main
from cnas_hpc.common import attrs
from cnas_hpc.common.errors import StudyError
from cnas_hpc.config import Settings
from cnas_hpc.config.report import ReportConfig
from cnas_hpc.search.worker import run_worker
from cnas_hpc.space.encoding import encoding_from_config
from cnas_hpc.space.genotype import genotype_from_dict, genotype_from_json, genotype_to_json
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.lifecycle import bootstrap_study, load_study
from tests.helpers import TINY, run_here, run_launch, tiny_settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = ("history", "best_vs_time", "importances", "best_normal", "best_reduce")
# Smaller than debug=tiny: the report needs trials, not training. None of these overrides
# changes the study's identity (name, space, objective), so the report addresses it without them.
FAST = (
    "data.fraction=0.1",
    "train.batch_size=16",
    "train.max_steps_per_epoch=1",
    "train.num_threads=1",
)
OOM = "RuntimeError: CUDA out of memory. Tried to allocate {} GiB"


@dataclass(frozen=True)
class Searched:
    """The shared study and what was put into it."""

    home: Path
    settings: Settings  # the search's settings, budget 3 (spent)
    alive: int  # RUNNING trial numbers
    stale: int
    oom: tuple[int, int]  # FAIL trials with the same cause
    odd: int  # FAIL trial whose reason holds an escape sequence


def report_settings(home: Path, n_trials: int = 6) -> Settings:
    """The same study seen with a larger budget (as after `search.n_trials=6`)."""
    return tiny_settings(home, f"search.n_trials={n_trials}")


def trial_id_of(handle: StudyHandle, number: int) -> int:
    return handle.storage.get_trial_id_from_study_id_trial_number(handle.study_id, number)


def add_running(handle: StudyHandle, *, worker: str, job: str, task: int, host: str) -> int:
    trial = handle.study.ask()
    trial.set_user_attr(attrs.WORKER, worker)
    trial.set_user_attr(attrs.ARRAY_JOB, job)
    trial.set_user_attr(attrs.ARRAY_TASK, task)
    trial.set_user_attr(attrs.HOST, host)
    handle.storage.record_heartbeat(trial_id_of(handle, trial.number))
    return trial.number


def age_heartbeat(handle: StudyHandle, number: int, hours: float) -> None:
    """Move a trial's last heartbeat ``hours`` into the past (its worker died)."""
    trial_id = trial_id_of(handle, number)
    with handle.engine.begin() as conn:
        (beat,) = conn.execute(
            sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :t"),
            {"t": trial_id},
        ).one()
        if isinstance(beat, str):  # SQLite hands back text
            beat = datetime.fromisoformat(beat)
        conn.execute(
            sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = :b WHERE trial_id = :t"),
            {"b": beat - timedelta(hours=hours), "t": trial_id},
        )


def add_failed(study: optuna.Study, reason: str) -> int:
    trial = study.ask()
    trial.set_user_attr(attrs.FAIL_REASON, reason)
    study.tell(trial, state=TrialState.FAIL)
    return trial.number


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Searched:
    home = tmp_path_factory.mktemp("search")
    settings = tiny_settings(home, "search.n_trials=3", *FAST)
    bootstrap_study(settings)
    threads = torch.get_num_threads()
    try:
        assert run_worker(settings).completed == 3
    finally:
        torch.set_num_threads(threads)  # train.num_threads is process-wide: give it back
    handle = load_study(settings, worker=0, scoring=False)
    study = handle.study
    alive = add_running(handle, worker="slurm:4242_7", job="4242", task=7, host="gpu-node-12")
    stale = add_running(handle, worker="slurm:4242_3", job="4242", task=3, host="gpu-node-03")
    age_heartbeat(handle, stale, hours=1.0)
    oom = (add_failed(study, OOM.format("2.00")), add_failed(study, OOM.format("11.50")))
    odd = add_failed(study, "ValueError: bad \x1b[31mred\x1b[0m value\r")
    handle.engine.dispose()
    return Searched(home, settings, alive, stale, oom, odd)


@pytest.fixture(scope="module")
def status(searched: Searched) -> StudyStatus:
    settings = report_settings(searched.home)
    handle = load_study(settings, worker=0, scoring=False)
    study = handle.study
    states = [t.state for t in study.get_trials(deepcopy=False)]
    result = collect_status(handle, settings, top_k=2, recent=2)
    assert [t.state for t in study.get_trials(deepcopy=False)] == states  # read-only
    return result


def test_counts_budget_and_what_a_resume_will_do(status: StudyStatus) -> None:
    assert status.study_name == "cnas-digits-compact"
    assert status.counts == {"COMPLETE": 3, "RUNNING": 2, "WAITING": 0, "FAIL": 3, "PRUNED": 0}
    assert status.n_trials == 6 and status.to_complete == 3 and not status.done
    # One trial still alive, the stale one is failed and retried, one slot is new.
    assert (status.retries, status.new_trials) == (1, 1)


def test_running_trials_carry_their_worker_and_last_heartbeat(
    searched: Searched, status: StudyStatus
) -> None:
    by_number = {r.number: r for r in status.running}
    assert set(by_number) == {searched.alive, searched.stale}
    alive = by_number[searched.alive]
    assert (alive.worker, alive.array_job, alive.array_task, alive.host) == (
        "slurm:4242_7",
        "4242",
        "7",
        "gpu-node-12",
    )
    assert alive.heartbeat_age_s is not None and alive.heartbeat_age_s < 600
    assert not alive.stale
    dead = by_number[searched.stale]
    assert dead.heartbeat_age_s is not None and dead.heartbeat_age_s > 3000
    assert dead.stale and status.stale == [searched.stale]
    assert status.grace_period_s == 180


def test_failures_are_grouped_by_cause(searched: Searched, status: StudyStatus) -> None:
    groups = {g.reason: g for g in status.failures}
    oom = groups["RuntimeError: CUDA out of memory. Tried to allocate N GiB"]
    assert (oom.count, oom.trials) == (2, sorted(searched.oom))
    assert oom.example == OOM.format("2.00")
    assert status.failures[0] is oom  # most frequent first
    assert sum(g.count for g in status.failures) == status.counts["FAIL"]


def test_best_trials_throughput_and_eta(searched: Searched, status: StudyStatus) -> None:
    study = load_study(searched.settings, worker=0, scoring=False).study
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: float(t.value or 0.0),
    )
    assert [r.number for r in status.best] == [t.number for t in complete[:2]]
    best = status.best[0]
    assert best.genotype == genotype_from_json(complete[0].user_attrs[attrs.GENOTYPE])
    assert status.objective == "val_contrastive_loss" and status.direction == "minimize"
    assert status.per_hour_life is not None and status.per_hour_life > 0
    assert status.recent_n == 2 and status.per_hour_recent is not None
    assert status.eta is not None
    expected = timedelta(hours=3 / status.per_hour_recent)
    assert abs(status.eta - expected) < timedelta(seconds=1)
    first = min(t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start)
    assert status.first_start == first


def test_the_text_is_plain_and_says_it_all(searched: Searched, status: StudyStatus) -> None:
    text = format_status(status)
    assert "\x1b" not in text and "\r" not in text
    assert "COMPLETE 3  RUNNING 2  WAITING 0  FAIL 3  PRUNED 0" in text
    assert "a resume starts 2 trial(s): 1 retry + 1 new" in text
    assert "slurm:4242_7" in text and "gpu-node-12" in text and "4242_7" in text
    stale_rows = [line for line in text.splitlines() if "STALE" in line]
    assert len(stale_rows) == 1 and stale_rows[0].split()[0] == str(searched.stale)
    assert "2 x RuntimeError: CUDA out of memory" in text
    assert f"best genotype (trial {status.best[0].number}" in text
    op, _ = status.best[0].genotype.normal[0]
    assert f"node 0 = {op}(" in text
    assert "storage sqlite:///" in text


def test_a_spent_budget_says_a_resume_does_nothing(searched: Searched) -> None:
    settings = report_settings(searched.home, n_trials=3)
    done = collect_status(load_study(settings, worker=0, scoring=False), settings)
    assert done.done and done.to_complete == 0 and done.eta == timedelta(0)
    assert (done.retries, done.new_trials) == (0, 0)
    assert "a resume does nothing" in format_status(done)


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    assert path.stat().st_size > 5_000, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, path
    assert image[..., :3].std() > 0.03, path  # something is drawn


def test_run_report_writes_pictures_html_and_best_genotypes(
    searched: Searched, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    settings = report_settings(searched.home)
    assert run_report(settings, {"out_dir": str(out), "top_k": 2}) == 0
    printed = capsys.readouterr().out
    assert "COMPLETE 3  RUNNING 2" in printed
    assert "optuna-dashboard sqlite:///" in printed and str(out / "index.html") in printed
    for name in PICTURES:
        check_png(out / f"{name}.png")
    page = (out / "index.html").read_text()
    for name in PICTURES:
        assert f'<img src="{name}.png"' in page
    assert "<pre>" in page and "-&gt; a resume starts" in page and "<script" not in page
    assert (out / "status.txt").read_text().startswith("study      cnas-digits-compact")

    best = json.loads((out / "best_genotypes.json").read_text())
    study = load_study(settings, worker=0, scoring=False).study
    trials = study.get_trials(deepcopy=False)
    assert best["study"] == "cnas-digits-compact" and len(best["top"]) == 2
    assert best["trial"] == study.best_trial.number and best["value"] == study.best_value
    for entry in best["top"]:
        recorded = genotype_from_json(trials[entry["trial"]].user_attrs[attrs.GENOTYPE])
        assert genotype_from_dict(entry["genotype"]) == recorded
    assert genotype_from_dict(best["genotype"]) == genotype_from_dict(best["top"][0]["genotype"])
    assert param_importances(study) is not None  # 3 trials with varying params: a real chart


def test_report_switches_are_honoured_and_validated(searched: Searched, tmp_path: Path) -> None:
    settings = report_settings(searched.home)
    out = tmp_path / "bare"
    run_report(settings, ReportConfig(out_dir=str(out), pictures=False, json=False))
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "status.txt"]
    with pytest.raises(ValueError, match=r"report\.top_k must be an integer >= 1"):
        ReportConfig.from_mapping({"top_k": 0})
    with pytest.raises(ValueError, match=r"unknown key report\.colour"):
        ReportConfig.from_mapping({"colour": True})


def test_a_report_never_creates_a_study(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path)
    with pytest.raises(StudyError, match=r"not found.*cnas\.db does not exist"):
        run_report(settings, {})
    assert not list(tmp_path.iterdir())


def test_plots_of_a_study_without_results_are_placeholders(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="empty")
    choice: dict[str, BaseDistribution] = {"c": CategoricalDistribution(["a", "b"])}

    def add(value: float, c: str) -> None:
        study.add_trial(
            optuna.trial.create_trial(params={"c": c}, distributions=choice, value=value)
        )

    for k, step in enumerate([lambda: None, lambda: add(1.0, "a"), lambda: add(2.0, "a")]):
        step()  # no trial, one trial, two trials with the same params: nothing to compare
        assert param_importances(study) is None
        for plot in (plot_history, plot_best_vs_time, plot_importances):
            path = plot(study, tmp_path / f"{plot.__name__}_{k}.png")
            assert path.read_bytes()[:8] == PNG_MAGIC
    add(3.0, "b")
    assert param_importances(study) == {"c": pytest.approx(1.0)}
    assert IMPORTANCE_PLACEHOLDER == "needs >= 2 complete trials with varying params"


def test_write_html_escapes_text_and_links_images(tmp_path: Path) -> None:
    inside = tmp_path / "r" / "a_plot.png"
    outside = tmp_path / "elsewhere.png"
    page = write_html(tmp_path / "r", "<script>alert('x')</script> & more", [inside, outside])
    text = page.read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    assert "<script>" not in text
    assert '<img src="a_plot.png" alt="a plot">' in text
    assert f'src="{outside.resolve().as_uri()}"' in text


def test_the_dashboard_command_never_shows_a_password(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, "study.storage=postgresql://me:s3cr3t@db:5432/nas")
    command = dashboard_command(settings)
    assert "s3cr3t" not in command
    assert "optuna-dashboard 'postgresql+psycopg2://me:***@db:5432/nas'" in command
    assert "PGPASSWORD" in command


# ---- the command line -----------------------------------------------------------------------


def run_report_cli(
    args: Sequence[str], *, home: Path, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``launch/report.py`` as a user would."""
    return run_launch("report.py", args, home=home, cwd=cwd, timeout=timeout)


def test_the_report_command_prints_the_status_and_writes_the_report(
    searched: Searched, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # The live trial's worker beats again, as it would every heartbeat interval: on a slow
    # machine the module's earlier tests may take longer than the grace period.
    handle = load_study(report_settings(searched.home), worker=0, scoring=False)
    handle.storage.record_heartbeat(trial_id_of(handle, searched.alive))
    handle.engine.dispose()
    result = run_report_cli(
        [*TINY, "search.n_trials=6", f"report.out_dir={out}", "report.top_k=3"],
        home=searched.home,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "study      cnas-digits-compact" in result.stdout
    assert "a resume starts 2 trial(s)" in result.stdout
    assert "optuna-dashboard sqlite:///" in result.stdout
    assert "\x1b" not in result.stdout + result.stderr
    for name in PICTURES:
        check_png(out / f"{name}.png")
    assert len(json.loads((out / "best_genotypes.json").read_text())["top"]) == 3
    assert not list(cwd.iterdir())  # no outputs/, .hydra/ or log file where it ran


def test_the_report_command_refuses_a_missing_study(tmp_path: Path) -> None:
    # In this process (run_here): a refusal ends before any work.
    result = run_here("report.py", report_main, [*TINY], home=tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cnas-digits-compact" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # no empty cnas.db, no study, no report


# ---- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.postgres
def test_status_on_postgresql(fresh_pg_url: str, tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, f"study.storage={fresh_pg_url}", "search.n_trials=4")
    bootstrap_study(settings)
    handle = load_study(settings, worker=0, scoring=False)
    study = handle.study
    space = encoding_from_config(settings.space)
    for value in (2.0, 1.0):
        trial = study.ask()
        trial.set_user_attr(attrs.GENOTYPE, genotype_to_json(space.suggest(trial)))
        study.tell(trial, value)
    alive = add_running(handle, worker="slurm:9_1", job="9", task=1, host="gpu-a")
    stale = add_running(handle, worker="slurm:9_2", job="9", task=2, host="gpu-b")
    age_heartbeat(handle, stale, hours=2.0)
    status = collect_status(handle, settings)
    ages = {r.number: r.heartbeat_age_s or -1.0 for r in status.running}
    assert 0 <= ages[alive] < 600  # the database's clock: no time-zone offset
    assert ages[stale] > 7000
    assert status.stale == [stale]
    assert status.counts["COMPLETE"] == 2 and status.best[0].value == 1.0
    assert (status.to_complete, status.retries, status.new_trials) == (2, 1, 0)
    with pytest.raises(StudyError, match="does not exist"):
        run_report(tiny_settings(tmp_path, f"study.storage={fresh_pg_url}", "study.name=nope"), {})
    assert [s.study_name for s in optuna.get_all_study_summaries(fresh_pg_url)] == [
        study.study_name
    ]
