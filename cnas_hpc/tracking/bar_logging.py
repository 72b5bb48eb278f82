"""Log lines and progress bars on one terminal: the log goes above the bars, never through them.

While tqdm draws a bar on a terminal, an ordinary log line written to the same console lands
in the middle of it (the bar's half-line, then the message, then a redrawn bar). While bars are
drawn, :class:`BarLogging` routes the root logger's console handlers through ``tqdm.write``
(tqdm's own ``logging_redirect_tqdm``): the bar is cleared, the line printed, the bar redrawn.
File handlers are left alone; without bars (a SLURM log) nothing changes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from tqdm.contrib.logging import logging_redirect_tqdm


class BarLogging:
    """Redirects console logging through tqdm between :meth:`start` and :meth:`stop`
    (both idempotent)."""

    def __init__(self) -> None:
        self._redirect: AbstractContextManager[None] | None = None

    def start(self) -> None:
        """Bars are being drawn: console log lines go through ``tqdm.write`` from now on."""
        if self._redirect is None:
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def stop(self) -> None:
        """No bar any more: the console handlers are put back."""
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
