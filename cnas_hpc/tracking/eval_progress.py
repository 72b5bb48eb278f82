"""Terminal progress of an evaluation: an epoch bar on a terminal, plain log lines in SLURM logs.

An adapter of the evaluation app's observer protocol
(:class:`cnas_hpc.evaluate.observer.EvalObserver`). Only global rank 0 reports progress.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from tqdm import tqdm

from cnas_hpc.evaluate.observer import EvalInfo
from cnas_hpc.tracking.bar_logging import BarLogging

log = logging.getLogger("cnas_hpc.progress")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


class EvalProgress:
    """Progress of one evaluation task (bars only when ``stream`` is a TTY, unless forced)."""

    def __init__(self, *, stream: TextIO | None = None, use_bars: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.use_bars = self.stream.isatty() if use_bars is None else use_bars
        self._bar: tqdm | None = None
        self._info: EvalInfo | None = None
        self._logging = BarLogging()

    def _label(self) -> str:
        info = self._info
        return "cell ?" if info is None else f"cell {info.cell_index} ({info.cell_key})"

    def cell_started(self, info: EvalInfo, *, n_params: int, macs: int) -> None:
        """A cell begins (or resumes) training."""
        self._info = info
        if self.use_bars:
            self._logging.start()
            self._bar = tqdm(
                total=info.epochs,
                initial=info.start_epoch,
                desc=self._label(),
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
            )
        else:
            log.info(
                "%s: %s on %s, %.2fM params, %.1fM MACs, %d epochs%s",
                self._label(),
                info.method,
                info.worker,
                n_params / 1e6,
                macs / 1e6,
                info.epochs,
                f", resumed at epoch {info.start_epoch}" if info.start_epoch else "",
            )

    def epoch(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """One epoch of the current cell ended."""
        train, test = metrics.get("train_accuracy"), metrics.get("test_accuracy")
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"train={_pct(train)} test={_pct(test)}")
            return
        total = self._info.epochs if self._info is not None else "?"
        loss = metrics.get("train_loss")
        log.info(
            "%s: epoch %d/%s loss %s train %s test %s lr %s %s images/s",
            self._label(),
            epoch,
            total,
            "-" if loss is None else f"{loss:.4f}",
            _pct(train),
            _pct(test),
            "-" if metrics.get("lr") is None else f"{metrics['lr']:.5f}",
            "-" if metrics.get("images_per_s") is None else f"{metrics['images_per_s']:.0f}",
        )

    def cell_finished(self, state: str, summary: Mapping[str, Any]) -> None:
        """The current cell ended in ``state``."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._logging.stop()
        detail = summary.get("fail_reason") or (
            f"test accuracy {_pct(summary.get('test_accuracy'))}"
            if summary.get("test_accuracy") is not None
            else f"probe kNN {_pct(summary.get('probe_knn_accuracy'))} "
            f"linear {_pct(summary.get('probe_linear_accuracy'))}"
        )
        message = f"{self._label()}: {state} {detail}"
        if self.use_bars:
            tqdm.write(message, file=self.stream)
        else:
            log.info(message)

    def close(self) -> None:
        """Close the bar (safe to call twice)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._logging.stop()
