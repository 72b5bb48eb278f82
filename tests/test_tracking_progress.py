"""Terminal progress: bars on a terminal, plain log lines (no control characters) elsewhere."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from cnas_hpc.search.observer import TrialInfo
from cnas_hpc.space.genotype import DARTS_V2
from cnas_hpc.tracking.progress import SearchProgress

INFO = TrialInfo(
    study_name="s",
    number=3,
    genotype=DARTS_V2,
    params={},
    worker="local:h:1",
    worker_index=0,
    world_size=1,
    hparams={"train.epochs": 2},
)


def drive(progress: SearchProgress) -> None:
    progress.study_updated(2, 1.5)
    progress.trial_started(INFO, n_params=1000, macs=2_000_000)
    progress.epoch(1, {"train_loss": 4.0, "objective": 3.9})
    progress.epoch(2, {"train_loss": 3.0, "objective": 2.9})
    progress.trial_finished("COMPLETE", 2.9, {"wall_s": 1.0})
    progress.study_updated(3, 1.5)
    progress.close()


def test_a_terminal_gets_a_study_bar_and_an_epoch_bar() -> None:
    stream = io.StringIO()
    drive(SearchProgress(8, stream=stream, use_bars=True))
    out = stream.getvalue()
    assert "\r" in out  # bars redraw in place
    assert "study" in out and "trial 3" in out and "best=1.5" in out and "eta=" in out
    assert "trial 3: COMPLETE value=2.9000" in out


def test_a_log_file_gets_plain_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()  # not a TTY
    with caplog.at_level(logging.INFO, logger="cnas_hpc.progress"):
        drive(SearchProgress(8, stream=stream))
    assert stream.getvalue() == ""  # nothing drawn
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "study: 2/8 trials complete, best 1.5000" in text
    assert "trial 3: epoch 2/2 loss 3.0000 objective 2.9000" in text
    assert "trial 3: COMPLETE value=2.9000" in text
    assert "\r" not in text and "\x1b" not in text


def test_a_log_line_is_printed_above_the_bars_not_through_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)  # what Hydra's console logging is
    root.addHandler(console)
    try:
        progress = SearchProgress(8, stream=sys.stderr, use_bars=True)
        progress.study_updated(2, 1.5)
        progress.trial_started(INFO, n_params=1000, macs=2_000_000)
        assert console not in root.handlers  # routed through tqdm while bars are drawn
        logging.getLogger("cnas_hpc.somewhere").warning("a log line")
        progress.close()
        assert console in root.handlers  # and put back afterwards
    finally:
        root.removeHandler(console)
    # What the terminal shows, line by line (cursor moves and carriage returns taken out).
    shown = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", capsys.readouterr().err)
    pieces = re.split(r"[\r\n]", shown)
    assert "a log line" in pieces  # a line of its own: the bar was cleared first
    assert not any("a log line" in piece and "it/s" in piece for piece in pieces)
