"""Terminal progress of a worker: bars on a terminal, plain log lines elsewhere.

On an interactive terminal a study bar (trials done / budget, best so far, ETA) and a per-trial
epoch bar are drawn with tqdm. In a SLURM log (not a TTY) bars would fill the file with carriage
returns and escape codes, so the same events become ordinary log lines instead. While bars are
drawn, log lines are printed above them (:class:`~cnas_hpc.tracking.bar_logging.BarLogging`).
Only global rank 0 reports progress. An adapter of the search worker's observer protocol
(:class:`cnas_hpc.search.observer.TrialObserver`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm

from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.tracking.bar_logging import BarLogging

log = logging.getLogger("cnas_hpc.progress")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class SearchProgress:
    """Progress of one worker over a study's budget.

    Args:
        n_trials: the study's budget of COMPLETE trials.
        stream: where bars are drawn (default ``sys.stderr``).
        use_bars: force bars on/off; default: bars only when ``stream`` is a TTY.
    """

    def __init__(
        self, n_trials: int, *, stream: TextIO | None = None, use_bars: bool | None = None
    ) -> None:
        self.n_trials = n_trials
        self.stream = stream or sys.stderr
        self.use_bars = self.stream.isatty() if use_bars is None else use_bars
        self._started = time.monotonic()
        self._complete_at_start: int | None = None
        self._study_bar: tqdm | None = None
        self._epoch_bar: tqdm | None = None
        self._trial: int | None = None
        self._epochs: int | None = None
        self._logging = BarLogging()

    def study_updated(self, complete: int, best: float | None) -> None:
        """Record the study's COMPLETE count and best value (from any worker)."""
        if self._complete_at_start is None:
            self._complete_at_start = complete
        eta = self._eta(complete)
        if self.use_bars:
            if self._study_bar is None:
                self._logging.start()
                self._study_bar = tqdm(
                    total=self.n_trials,
                    desc="study",
                    position=0,
                    file=self.stream,
                    dynamic_ncols=True,
                    leave=True,
                )
            self._study_bar.n = min(complete, self.n_trials)
            self._study_bar.set_postfix_str(f"best={_fmt(best)} eta={eta}", refresh=True)
        else:
            log.info(
                "study: %d/%d trials complete, best %s, eta %s",
                complete,
                self.n_trials,
                _fmt(best),
                eta,
            )

    def _eta(self, complete: int) -> str:
        done_here = complete - (self._complete_at_start or 0)
        if done_here <= 0:
            return "?"
        per_trial = (time.monotonic() - self._started) / done_here
        seconds = per_trial * max(0, self.n_trials - complete)
        return time.strftime("%H:%M:%S", time.gmtime(seconds))

    def trial_started(self, info: TrialInfo, *, n_params: int, macs: int) -> None:
        """A trial begins (or resumes) training."""
        self._trial = info.number
        self._epochs = int(info.hparams.get("train.epochs", 0)) or None
        if self.use_bars:
            self._logging.start()
            self._epoch_bar = tqdm(
                total=self._epochs,
                initial=info.start_epoch,
                desc=f"trial {info.number}",
                position=1,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
            )
        else:
            log.info(
                "trial %d: started on %s (%.2fM params, %.1fM MACs)%s",
                info.number,
                info.worker,
                n_params / 1e6,
                macs / 1e6,
                f", resumed at epoch {info.start_epoch}" if info.start_epoch else "",
            )

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Steps are too frequent for the terminal: epochs are reported instead."""

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """One epoch of the current trial ended."""
        loss = metrics.get("train_loss")
        objective = metrics.get("objective")
        if self._epoch_bar is not None:
            self._epoch_bar.update(1)
            self._epoch_bar.set_postfix_str(f"loss={_fmt(loss)} obj={_fmt(objective)}")
        else:
            log.info(
                "trial %s: epoch %d/%s loss %s objective %s",
                self._trial,
                epoch,
                self._epochs or "?",
                _fmt(loss),
                _fmt(objective),
            )

    def trial_finished(self, state: str, value: float | None, summary: Mapping[str, Any]) -> None:
        """The current trial ended in ``state``."""
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None
        detail = summary.get("fail_reason") or (
            f"({summary['wall_s']:.1f}s)" if "wall_s" in summary else ""
        )
        if summary.get("pruned_at_epoch") is not None:
            detail = f"after epoch {summary['pruned_at_epoch']} {detail}"
        # The summary names the trial even when it failed before training started.
        number = summary.get("trial", self._trial)
        message = f"trial {number}: {state} value={_fmt(value)} {detail}".rstrip()
        self._trial = None
        if self.use_bars:
            tqdm.write(message, file=self.stream)
        else:
            log.info(message)

    def close(self) -> None:
        """Close the bars (safe to call twice)."""
        for bar in (self._epoch_bar, self._study_bar):
            if bar is not None:
                bar.close()
        self._epoch_bar = self._study_bar = None
        self._logging.stop()
