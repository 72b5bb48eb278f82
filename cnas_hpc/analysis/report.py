"""The status of a running (or finished) search, as text, pictures, HTML and JSON.

A search runs for days as an array of workers sharing one study; this module answers, from the
study alone, what a user asks while it runs: how far is it, who is running what and is it alive,
what would a resume do, how fast does it go and when will it end, what are the best cells so far,
and why did trials fail.

Contract:
    * Read-only towards the study: nothing here creates a schema, a study or a trial, or changes
      a trial's state. A missing study (or a missing SQLite file) is a :class:`StudyError`.
    * Works on any RDB storage Optuna supports (SQLite, PostgreSQL); heartbeats are read from
      Optuna's heartbeat table through the storage's SQLAlchemy engine, with the database's own
      clock (as Optuna's stale-trial check does), so worker clocks do not matter.
    * Text output is plain (no colours, no escape codes): it ends up in log files and e-mails.
    * Storage URLs are shown only through :func:`~cnas_hpc.study.lifecycle.mask_url`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from tabulate import tabulate

from cnas_hpc.analysis.cells import draw_genotype
from cnas_hpc.analysis.evaluations import format_results, study_rows
from cnas_hpc.analysis.pareto import write_front_report
from cnas_hpc.analysis.plots import (
    complete_trials,
    plot_best_vs_time,
    plot_history,
    plot_importances,
    write_html,
)
from cnas_hpc.analysis.study_view import log_study_view
from cnas_hpc.analysis.summary import RankedTrial, best_trials, format_table, write_best_genotypes
from cnas_hpc.common import attrs
from cnas_hpc.common.errors import StudyError
from cnas_hpc.common.storage_url import mask_url
from cnas_hpc.config import Settings
from cnas_hpc.config.report import ReportConfig
from cnas_hpc.search.pending import PendingResults
from cnas_hpc.space.genotype import Genotype
from cnas_hpc.space.primitives import CELL_KINDS
from cnas_hpc.study.budget import free_slots
from cnas_hpc.study.handle import StudyHandle
from cnas_hpc.study.lifecycle import load_study
from cnas_hpc.study.optuna_internals import heartbeat_ages
from cnas_hpc.study.pareto import objectives_of, pareto_view, primary_of, trial_costs
from cnas_hpc.study.stale import why_stale

log = logging.getLogger(__name__)

#: Trial states counted in a status, in display order.
STATES: tuple[str, ...] = ("COMPLETE", "RUNNING", "WAITING", "FAIL", "PRUNED")

# Failure reasons are grouped and shown up to this many characters.
_REASON_CHARS = 90


# ---- the data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial, who runs it, and whether it is still alive.

    Attributes:
        number: The trial number.
        worker: The worker label (``cnas:worker``), ``"?"`` when not recorded yet.
        array_job: SLURM array job id, or None outside SLURM.
        array_task: SLURM array task id, or None outside SLURM.
        host: Host name of the worker, or None.
        started: When the trial started (the worker's clock, naive local time), or None.
        heartbeat_age_s: Seconds since its last heartbeat, by the database's clock; None when it
            has recorded none.
        stale: True when the next claim of any worker fails the trial and re-enqueues it: its
            heartbeat is older than the grace period AND nothing says its worker comes back (a
            job SLURM still holds, a result waiting on disk; see
            :func:`cnas_hpc.study.stale.why_stale`). A trial without a heartbeat is never stale.
        retry_of: The original trial number when this trial is a retry, else None.
        kept: Why a trial past the grace period is NOT stale (``"SLURM holds job 1234_1"``),
            or None.
    """

    number: int
    worker: str
    array_job: str | None
    array_task: str | None
    host: str | None
    started: datetime | None
    heartbeat_age_s: float | None
    stale: bool
    retry_of: int | None = None
    kept: str | None = None


@dataclass(frozen=True)
class FailureGroup:
    """FAIL trials that failed for the same reason.

    Attributes:
        reason: The reason with trial-specific numbers replaced by ``N`` (the group key).
        count: How many FAIL trials share it.
        trials: Their numbers, ascending.
        example: One full reason as recorded (``cnas:fail_reason``).
    """

    reason: str
    count: int
    trials: list[int]
    example: str


@dataclass(frozen=True)
class StudyStatus:
    """Everything :func:`format_status` prints, as data.

    Attributes:
        study_name: The study's name.
        storage: The storage URL, password masked.
        objective: The objective the study was built for (``cnas:objective``).
        direction: ``"minimize"`` or ``"maximize"``.
        n_trials: The budget: COMPLETE trials over the whole study (``search.n_trials``).
        counts: Trials per state, every name of :data:`STATES` present.
        running: RUNNING trials, by number.
        grace_period_s: The heartbeat grace period the staleness was judged with.
        to_complete: COMPLETE trials still missing from the budget.
        retries: Trials a resume runs again with the same parameters: WAITING ones plus stale
            ones that have retries left.
        new_trials: Fresh proposals a resume will ask for (if nothing else fails).
        best: The best COMPLETE trials, best first (:func:`~cnas_hpc.analysis.summary.best_trials`).
        failures: FAIL trials grouped by reason, most frequent first.
        first_start: Start of the study's first trial (worker clock), or None.
        last_complete: End of its last COMPLETE trial, or None.
        per_hour_life: COMPLETE trials per hour from ``first_start`` (any trial) to
            ``last_complete``.
        per_hour_recent: The same over the last ``recent_n`` COMPLETE trials.
        recent_n: How many trials ``per_hour_recent`` is based on.
        eta: Time to complete the budget at the recent rate (life rate if no recent one), or None.
        objectives: A multi-objective study's ``(name, direction)`` pairs (empty for one
            objective); ``objective`` and ``direction`` are then its primary objective's, the
            one ``best`` is ranked by.
    """

    study_name: str
    storage: str
    objective: str
    direction: str
    n_trials: int
    counts: dict[str, int]
    running: list[RunningTrial]
    grace_period_s: float
    to_complete: int
    retries: int
    new_trials: int
    best: list[RankedTrial] = field(default_factory=list)
    failures: list[FailureGroup] = field(default_factory=list)
    first_start: datetime | None = None
    last_complete: datetime | None = None
    per_hour_life: float | None = None
    per_hour_recent: float | None = None
    recent_n: int = 0
    eta: timedelta | None = None
    objectives: tuple[tuple[str, str], ...] = ()

    @property
    def stale(self) -> list[int]:
        """Numbers of the stale RUNNING trials."""
        return [t.number for t in self.running if t.stale]

    @property
    def done(self) -> bool:
        """Whether the budget is spent (a resume claims nothing)."""
        return self.to_complete == 0


# ---- collecting ----------------------------------------------------------------------------


def _heartbeat_ages(handle: StudyHandle) -> dict[int, float]:
    """Heartbeat ages by trial number; empty (and a warning) when they cannot be read."""
    try:
        return heartbeat_ages(handle)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("cannot read heartbeats: %s", str(exc).splitlines()[0])
        return {}


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _kept(trial: FrozenTrial, age: float | None, grace: float, pending: set[int]) -> str | None:
    """Why a trial past the grace period is spared (what the next claim decides), or None."""
    if age is None or age <= grace:
        return None
    if why_stale(trial, age, keep=lambda t: t.number in pending) is not None:
        return None
    if trial.number in pending:
        return "its result waits in pending/"
    return f"SLURM holds job {trial.user_attrs.get(attrs.JOB)}"


def _running(
    trials: Sequence[FrozenTrial],
    ages: Mapping[int, float],
    grace: float,
    pending: set[int] | None = None,
) -> list[RunningTrial]:
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        ua = t.user_attrs
        age = ages.get(t.number)
        retry_of = ua.get(attrs.RETRY_OF)
        kept = _kept(t, age, grace, pending or set())
        out.append(
            RunningTrial(
                number=t.number,
                worker=str(ua.get(attrs.WORKER, "?")),
                array_job=_optional_str(ua.get(attrs.ARRAY_JOB)),
                array_task=_optional_str(ua.get(attrs.ARRAY_TASK)),
                host=_optional_str(ua.get(attrs.HOST)),
                started=t.datetime_start,
                heartbeat_age_s=age,
                stale=age is not None and age > grace and kept is None,
                retry_of=None if retry_of is None else int(retry_of),
                kept=kept,
            )
        )
    return out


def _reason_key(reason: str) -> str:
    # "duplicate of trial 12" and "duplicate of trial 40" are one cause; so are two OOMs that
    # differ only in the size they tried to allocate. The exception's message is kept (not
    # only its type): "RuntimeError" alone would lump an OOM together with a NCCL timeout.
    first_line = reason.strip().splitlines()[0] if reason.strip() else "?"
    key = re.sub(r"\d+(\.\d+)?", "N", first_line)
    return key if len(key) <= _REASON_CHARS else key[: _REASON_CHARS - 3] + "..."


def group_failures(trials: Sequence[FrozenTrial]) -> list[FailureGroup]:
    """Group FAIL trials by the reason their worker recorded (``cnas:fail_reason``).

    A trial failed without a recorded reason was killed or lost its heartbeat (another worker
    failed it); when it was re-enqueued that is said explicitly.
    """
    retried = {
        int(t.user_attrs[attrs.RETRIED_FROM]) for t in trials if attrs.RETRIED_FROM in t.user_attrs
    }
    groups: dict[str, list[tuple[int, str]]] = {}
    for t in trials:
        if t.state != TrialState.FAIL:
            continue
        reason = t.user_attrs.get(attrs.FAIL_REASON)
        if reason is None:
            if t.number in retried:
                text = key = "heartbeat lost (stale): re-enqueued"
            else:
                text = key = "no reason recorded (killed, or heartbeat lost)"
        else:
            text = str(reason)
            key = _reason_key(text)
        groups.setdefault(key, []).append((t.number, text))
    out = [
        FailureGroup(key, len(items), sorted(n for n, _ in items), items[0][1])
        for key, items in groups.items()
    ]
    out.sort(key=lambda g: (-g.count, g.reason))
    return out


def _rate(trials: Sequence[FrozenTrial], since: datetime | None = None) -> float | None:
    """Trials per hour: ``len(trials)`` over the time from ``since`` (default: the earliest
    start among them) to the latest end among them."""
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not ends or (since is None and not starts):
        return None
    first = since if since is not None else min(starts)
    hours = (max(ends) - first).total_seconds() / 3600.0
    return len(trials) / hours if hours > 0 else None


def _retries_left(trial: FrozenTrial, max_retry: int) -> bool:
    return int(trial.user_attrs.get(attrs.RETRY_COUNT, 0)) < max_retry


def collect_status(
    handle: StudyHandle, settings: Settings, *, top_k: int = 5, recent: int = 10
) -> StudyStatus:
    """Gather the status of the study as ``settings`` (budget, grace period) see it.

    Args:
        handle: The loaded study.
        settings: The search's settings: ``search.n_trials`` is the budget,
            ``study.grace_period`` decides staleness, ``study.max_retry`` whether a stale trial
            is retried, ``study.storage`` is shown masked.
        top_k: How many best trials to include.
        recent: Window (COMPLETE trials) of the recent throughput and the ETA.

    Returns:
        The status; reading it twice a few seconds apart gives different heartbeat ages.

    Raises:
        ValueError: ``top_k`` or ``recent`` < 1.
    """
    if top_k < 1 or recent < 1:
        raise ValueError(f"top_k and recent must be >= 1, got {top_k} and {recent}")
    study = handle.study
    trials = study.get_trials(deepcopy=False)
    counts = {name: 0 for name in STATES}
    for t in trials:
        if t.state.name in counts:
            counts[t.state.name] += 1
    grace = float(settings.study.grace_period)
    running_trials = [t for t in trials if t.state == TrialState.RUNNING]
    pending = PendingResults(settings.pending_dir, math.inf).numbers()
    running = _running(running_trials, _heartbeat_ages(handle), grace, pending)

    n_trials = settings.search.n_trials
    to_complete = max(0, n_trials - counts["COMPLETE"])
    stale = {r.number for r in running if r.stale}
    stale_retried = sum(
        1
        for t in running_trials
        if t.number in stale and _retries_left(t, settings.study.max_retry)
    )
    alive = len(running) - len(stale)
    retries = counts["WAITING"] + stale_retried if to_complete else 0
    # The claim's own rule (free_slots), on the study as the next claim will see it: a stale
    # trial with retries left is failed and re-enqueued (a WAITING retry that keeps its slot),
    # one without is failed (its slot freed); live RUNNING trials keep theirs.
    new_trials = free_slots(
        n_trials, {"COMPLETE": counts["COMPLETE"], "RUNNING": alive, "WAITING": retries}
    )

    complete = sorted(
        complete_trials(study), key=lambda t: (t.datetime_complete or datetime.min, t.number)
    )
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in complete if t.datetime_complete is not None]
    # The life rate counts from the study's first trial, failed ones included: time they took
    # was spent on the budget too.
    life = _rate(complete, since=min(starts) if starts else None)
    window = complete[-recent:]
    recent_rate = _rate(window)
    rate = recent_rate or life
    eta = timedelta(hours=to_complete / rate) if rate and to_complete else None
    if not to_complete:
        eta = timedelta(0)

    objectives = objectives_of(study)
    directions = [
        "maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions
    ]
    primary = objectives.index(primary_of(objectives))
    single = len(objectives) == 1
    return StudyStatus(
        study_name=study.study_name,
        storage=mask_url(settings.study.storage),
        objective=(
            str(study.user_attrs.get(attrs.STUDY_OBJECTIVE, settings.search.objective))
            if single
            else objectives[primary]
        ),
        direction=directions[primary],
        objectives=() if single else tuple(zip(objectives, directions, strict=True)),
        n_trials=n_trials,
        counts=counts,
        running=running,
        grace_period_s=grace,
        to_complete=to_complete,
        retries=retries,
        new_trials=new_trials,
        best=best_trials(study, top_k),
        failures=group_failures(trials),
        first_start=min(starts) if starts else None,
        last_complete=max(ends) if ends else None,
        per_hour_life=life,
        per_hour_recent=recent_rate,
        recent_n=len(window),
        eta=eta,
    )


# ---- formatting ----------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``3.4 h``, ``2.1 d``: short and unambiguous."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _per_hour(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}/h"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _resume_lines(status: StudyStatus) -> list[str]:
    """What a resume will do, in two lines: the budget's state, then the trials it starts."""
    if status.done:
        complete = status.counts["COMPLETE"]
        return [f"budget spent ({complete}/{status.n_trials} complete): a resume does nothing"]
    alive = len(status.running) - len(status.stale)
    waiting = status.counts["WAITING"]
    state = (
        f"{status.to_complete} more COMPLETE trial(s) needed; {alive} running alive, "
        f"{len(status.stale)} stale, {_plural(waiting, 'waiting retry', 'waiting retries')}"
    )
    start = status.retries + status.new_trials
    plan = (
        f"-> a resume starts {start} trial(s): "
        f"{_plural(status.retries, 'retry', 'retries')} + {status.new_trials} new"
    )
    if status.stale:
        plan += " (stale trials are failed and retried at the next claim)"
    return [state, plan]


def _running_table(running: Sequence[RunningTrial], grace: float) -> list[str]:
    now = datetime.now()
    rows = []
    for r in running:
        array = f"{r.array_job}_{r.array_task}" if r.array_job is not None else "-"
        ran = _duration((now - r.started).total_seconds()) if r.started else "-"
        if r.heartbeat_age_s is None:
            beat = "none yet"
        else:
            beat = f"{_duration(r.heartbeat_age_s)} ago"
            if r.stale:
                beat += f"  STALE (> grace {_duration(grace)})"
            elif r.kept:
                beat += f"  kept: {r.kept}"
        retry = f"  (retry of {r.retry_of})" if r.retry_of is not None else ""
        rows.append(
            [r.number, r.worker[:22], array[:14], (r.host or "-")[:16], ran, f"{beat}{retry}"]
        )
    headers = ["trial", "worker", "array", "host", "running", "heartbeat"]
    table = tabulate(rows, headers, tablefmt="simple", colalign=("right",) + ("left",) * 5)
    return table.splitlines()


def describe_genotype(genotype: Genotype) -> list[str]:
    """Both cells as text, one line per node: ``node i = op(input) + op(input)``.

    Nodes are numbered as in the cell pictures (0 .. n-1); inputs ``c_{k-2}``/``c_{k-1}`` are
    the cell's inputs, ``node j`` another node.
    """

    def source(index: int) -> str:
        return ("c_{k-2}", "c_{k-1}")[index] if index < 2 else f"node {index - 2}"

    lines = []
    for cell in CELL_KINDS:
        edges = list(getattr(genotype, cell))
        concat = ", ".join(str(int(s) - 2) for s in getattr(genotype, f"{cell}_concat"))
        lines.append(f"  {cell} cell: output c_{{k}} = concat of nodes {concat}")
        for k in range(0, len(edges) - 1, 2):
            (op_a, in_a), (op_b, in_b) = edges[k], edges[k + 1]
            lines.append(
                f"    node {k // 2} = {op_a}({source(int(in_a))}) + {op_b}({source(int(in_b))})"
            )
    return lines


def format_status(status: StudyStatus) -> str:
    """The status as plain text (no colours, no escape codes), lines under 110 characters."""
    c = status.counts
    total = sum(c.values())
    if status.objectives:
        listed = ", ".join(f"{name} ({direction})" for name, direction in status.objectives)
        objective = f"objectives {listed}   best = by {status.objective}"
    else:
        objective = f"objective  {status.objective} ({status.direction})"
    lines = [
        f"study      {status.study_name}   storage {status.storage}",
        f"{objective}   budget {status.n_trials} COMPLETE trials",
        "trials     " + "  ".join(f"{name} {c[name]}" for name in STATES) + f"   (total {total})",
        f"progress   {c['COMPLETE']}/{status.n_trials} complete",
        *(
            f"{'resume' if i == 0 else '':<11}{line}"
            for i, line in enumerate(_resume_lines(status))
        ),
        f"timeline   first trial started {_when(status.first_start)}, "
        f"last completed {_when(status.last_complete)}",
        f"throughput {_per_hour(status.per_hour_life)} over the study's life, "
        f"{_per_hour(status.per_hour_recent)} over the last {status.recent_n} trial(s)",
    ]
    if status.done:
        lines.append("eta        done")
    elif status.eta is None:
        lines.append("eta        unknown (no COMPLETE trial yet)")
    else:
        lines.append(
            f"eta        {_duration(status.eta.total_seconds())} for the remaining "
            f"{status.to_complete} trial(s) at the recent rate"
        )
    lines.append("")
    if status.running:
        lines.append(
            f"running trials ({len(status.running)}; stale after "
            f"{_duration(status.grace_period_s)} without heartbeat)"
        )
        lines += _running_table(status.running, status.grace_period_s)
    else:
        lines.append("running trials: none")
    lines.append("")
    if status.best:
        lines.append(f"best {len(status.best)} trial(s)")
        lines.append(format_table(status.best, status.objective))
        best = status.best[0]
        lines.append(f"best genotype (trial {best.number}; JSON in best_genotypes.json):")
        lines += describe_genotype(best.genotype)
    else:
        lines.append("best trials: no COMPLETE trial yet")
    lines.append("")
    if status.failures:
        lines.append(f"failures ({c['FAIL']} trial(s), by reason)")
        for group in status.failures:
            numbers = ", ".join(str(n) for n in group.trials[:8])
            more = f", ... ({group.count - 8} more)" if group.count > 8 else ""
            lines.append(f"{group.count:>5} x {group.reason}   [trials {numbers}{more}]")
            if group.example != group.reason:
                lines.append(f"        e.g. {group.example[:200]}")
    else:
        lines.append("failures: none")
    text = "\n".join(lines)
    # Reasons come from exception messages: keep the output plain even if one held escapes.
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "?", text)


def _evaluations_text(handle: StudyHandle) -> str:
    """The evaluation phase's results for this study's trials (empty when there are none)."""
    try:
        rows = study_rows(handle.engine, handle.name)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("cannot read the evaluations: %s", str(exc).splitlines()[0])
        return ""
    if not rows:
        return ""
    return (
        f"\n\nevaluations ({len(rows)} cell(s) of this study trained from scratch)\n"
        + format_results(rows, costs=trial_costs(handle.study))
    )


def dashboard_command(settings: Settings) -> str:
    """The optuna-dashboard command for the study's storage, password masked."""
    url = settings.study.storage
    masked = mask_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return f"optuna-dashboard {masked}"
    return (
        f"optuna-dashboard '{masked}'   "
        "(the password comes from PGPASSWORD or ~/.pgpass, never from the URL)"
    )


# ---- the report command --------------------------------------------------------------------


def _check_storage_exists(settings: Settings) -> None:
    """Refuse a missing SQLite file up front: connecting would create an empty one."""
    url = make_url(settings.study.storage)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise StudyError(
            f"study {settings.study.name!r} not found: {url.database} does not exist "
            "(run the search first, with the same overrides)"
        )


def run_report(settings: Settings, report_cfg: ReportConfig | Mapping[str, Any]) -> int:
    """Print the study's status and write its report. Never creates or changes a study.

    Writes, under ``report_cfg.out_dir`` (default ``<output_dir>/<study>/report``):
    ``status.txt``, ``index.html``; with ``pictures``: ``history.png``, ``best_vs_time.png``,
    ``importances.png`` and the best trial's cells ``best_normal.png``, ``best_reduce.png``;
    with ``json``: ``best_genotypes.json`` (top-k, best first; skipped while no trial is
    COMPLETE). Prints the status text and the optuna-dashboard command on stdout.

    A cost-aware study (several objectives, or costs recorded on its trials) also gets its
    Pareto front (:mod:`cnas_hpc.analysis.pareto`): the front table in the text, with
    ``pictures`` ``pareto_<cost>.png`` per cost and the front's cells ``front_<trial>_*.png``,
    with ``json`` ``pareto.json``. A single-objective study without costs: unchanged.

    Args:
        settings: The search's settings (same overrides as the search).
        report_cfg: The ``report`` section (a :class:`ReportConfig` or its mapping).

    Returns:
        0.

    Raises:
        StudyError: The storage or the study does not exist, cannot be reached, or was built
            for another space or objective.
        ValueError: ``report_cfg`` is invalid.
    """
    cfg = (
        report_cfg
        if isinstance(report_cfg, ReportConfig)
        else ReportConfig.from_mapping(report_cfg)
    )
    _check_storage_exists(settings)
    handle = load_study(settings, worker=settings.worker, scoring=False)  # reads, scores nothing
    study = handle.study
    try:
        status = collect_status(handle, settings, top_k=cfg.top_k, recent=cfg.recent)
        text = format_status(status)
        out_dir = (
            Path(cfg.out_dir).expanduser()
            if cfg.out_dir
            else Path(settings.output_dir) / study.study_name / "report"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        images: list[Path] = []
        view = pareto_view(study)
        if view is not None:  # several objectives or recorded costs: the front too
            front_text, images = write_front_report(
                view, out_dir, pictures=cfg.pictures, json_file=cfg.json
            )
            text += "\n\n" + front_text
        text += _evaluations_text(handle)
        (out_dir / "status.txt").write_text(text + "\n", encoding="utf-8")
        if cfg.pictures:
            front_images = images
            images = [
                plot_history(study, out_dir / "history.png"),
                plot_best_vs_time(study, out_dir / "best_vs_time.png"),
                plot_importances(study, out_dir / "importances.png"),
            ]
            if status.best:
                best = status.best[0]
                images += draw_genotype(
                    best.genotype, out_dir, "best", title=f"best: trial {best.number}"
                )
            images += front_images
        page = write_html(out_dir, text, images, title=f"cnas-hpc study {study.study_name}")
        if cfg.json and status.best:
            write_best_genotypes(
                status.best, out_dir / "best_genotypes.json", study_name=study.study_name
            )
        elif cfg.json:
            log.warning("no COMPLETE trial yet: best_genotypes.json not written")
        if settings.wandb.enabled:
            # The same self-contained study view the workers write on a new best, on demand.
            run_dir = log_study_view(study, settings, trigger="on_demand", written_by="report")
            log.info("W&B study view written to %s", run_dir)
    finally:
        handle.engine.dispose()
    print(text)
    print(f"\nreport: {page}")
    print(f"view the study live: {dashboard_command(settings)}", flush=True)
    return 0
