"""Asking the scheduler about a job: is it still held (queued, running, suspended, requeued)?

A worker's trial loses its heartbeat whenever its process does not run: killed, but also
preempted and requeued (SLURM holds a requeued job ~2 minutes in BeginTime, longer on a busy
cluster), suspended by an admin, or stopped by a node failure. Only the scheduler knows which: this
module asks it (``squeue`` for live jobs, ``sacct`` for those that left the queue). It runs the
SLURM client commands and reads no environment variable (those are
:mod:`cnas_hpc.distributed.env`'s).

Used by the stale-trial check (:mod:`cnas_hpc.study.stale`), the submitting side (is the study's
array still running?) and the launcher (is a worker without a result still held?).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

#: squeue/sacct states of a job that SLURM still holds and may yet run to its end.
HELD_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "PREEMPTED",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    }
)
#: How long one client command may take (a busy controller answers in well under a second).
CLIENT_TIMEOUT_S = 30.0


def slurm_available() -> bool:
    """Whether the SLURM client commands are installed here."""
    return shutil.which("squeue") is not None


def client_lines(args: list[str]) -> list[str] | None:
    """Non-empty lines of a SLURM client command's output (``squeue``, ``sinfo``, ...); None
    when it could not answer (missing, timed out after ``CLIENT_TIMEOUT_S``, non-zero exit)."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s: %s", args[0], exc)
        return None
    if done.returncode != 0:
        return None
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _first_word(line: str) -> str:
    # sacct writes "CANCELLED by 0"; a requeued job's state may carry a "+" suffix.
    return line.split()[0].rstrip("+") if line.split() else ""


def job_state(job_id: str) -> str | None:
    """SLURM's state of ``job_id`` (``"1234"`` or an array task ``"1234_5"``).

    ``squeue`` first (it knows live jobs, requeued ones included); a job that left the queue is
    looked up in the accounting (``sacct``). Returns ``None`` when neither knows the job or
    neither answers (no SLURM client, controller down).
    """
    if not slurm_available():
        return None
    queued = client_lines(["squeue", "-h", "-j", job_id, "-o", "%T"])
    if queued:
        return _first_word(queued[0])
    accounted = client_lines(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"])
    if accounted:
        return _first_word(accounted[-1])
    return None


def job_is_held(job_id: str) -> bool | None:
    """Whether SLURM still holds ``job_id``: True/False, or None when it cannot tell."""
    state = job_state(job_id)
    return None if state is None else state in HELD_STATES


def array_tasks_held(array_job_id: str) -> list[str]:
    """``"<job id> <state>"`` of the tasks of array ``array_job_id`` that SLURM still holds.

    Empty when the array ended (or SLURM cannot be asked).
    """
    if not slurm_available():
        return []
    lines = client_lines(["squeue", "-h", "-r", "-j", array_job_id, "-o", "%i %T"]) or []
    return [line for line in lines if len(line.split()) == 2 and line.split()[1] in HELD_STATES]
