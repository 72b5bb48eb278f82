"""Results on disk: what a worker computed but could not tell yet, told by the next run.

Contract:
    * A finished trial's result is written to ``<output_dir>/pending/<study>/trial-<n>.json``
      BEFORE it is told (atomically: temp file + rename), and removed once told. A result whose
      tell outlived the database's retry deadline (or a preemption) therefore survives the worker.
    * The folder is shared by every worker of the study (the output dir every node sees). A file is
      told by exactly one process: the teller first claims it by renaming it to
      ``trial-<n>.json.flushing-<host>-<pid>`` (``rename`` is atomic on POSIX file systems: one
      process wins, the others no longer see the file). A teller that fails gives the file back
      (renamed to its pending name); one that died leaves its claim behind, which is reclaimed the
      same way once it is older than ``abandon_after_s``. Telling twice is harmless anyway (a
      finished trial is skipped), the claim only keeps two workers from racing on one file.
    * While a result is pending, its trial is not judged stale by anyone
      (:meth:`PendingResults.holds`): its result exists and will be told.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PENDING = re.compile(r"^trial-(\d+)\.json$")
_CLAIMED = re.compile(r"^trial-(\d+)\.json\.flushing-.+$")


class PendingResults:
    """The pending results of one study (see the module docstring for the protocol).

    Args:
        folder: ``<output_dir>/pending/<study>``; created on the first write.
        abandon_after_s: age after which another process's claim counts as abandoned.
    """

    def __init__(self, folder: Path, abandon_after_s: float) -> None:
        self.folder = folder
        self.abandon_after_s = abandon_after_s
        self.token = f"{socket.gethostname()}-{os.getpid()}"

    def path(self, number: int) -> Path:
        """Where trial ``number``'s result waits."""
        return self.folder / f"trial-{number}.json"

    def write(self, payload: dict[str, Any]) -> Path:
        """Persist ``payload`` (which has a ``number``) atomically; returns its path."""
        path = self.path(int(payload["number"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{self.token}.tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)
        return path

    def remove(self, number: int) -> None:
        """Forget trial ``number``'s result (it was told)."""
        self.path(number).unlink(missing_ok=True)

    def holds(self, number: int) -> bool:
        """Whether a result of trial ``number`` waits on disk (pending or being told)."""
        if self.path(number).exists():
            return True
        return self.folder.is_dir() and any(self.folder.glob(f"trial-{number}.json.flushing-*"))

    def numbers(self) -> set[int]:
        """Trial numbers whose results wait on disk."""
        if not self.folder.is_dir():
            return set()
        found = set()
        for entry in self.folder.iterdir():
            match = _PENDING.match(entry.name) or _CLAIMED.match(entry.name)
            if match:
                found.add(int(match.group(1)))
        return found

    def claim_all(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Claim every pending (or abandoned) result, one at a time: ``(claimed path, payload)``.

        The caller must end every claim with :meth:`done`, :meth:`give_back` or :meth:`orphan`.
        Files another process claimed first are skipped.
        """
        if not self.folder.is_dir():
            return
        for entry in sorted(self.folder.iterdir()):
            claimable = _PENDING.match(entry.name) or _CLAIMED.match(entry.name)
            if claimable is None or (claimable.re is _CLAIMED and not self._abandoned(entry)):
                continue
            number = int(claimable.group(1))
            claimed = entry.with_name(f"trial-{number}.json.flushing-{self.token}")
            try:
                entry.rename(claimed)
            except FileNotFoundError:  # another worker claimed it first
                continue
            # Refresh the claim's age: it is ours from now on, whatever its history.
            os.utime(claimed)
            try:
                payload = json.loads(claimed.read_text())
            except (OSError, ValueError) as exc:
                log.warning("unreadable pending result %s (%s): kept aside", claimed, exc)
                claimed.rename(claimed.with_name(f"trial-{number}.unreadable.json"))
                continue
            yield claimed, payload

    def _abandoned(self, claimed: Path) -> bool:
        try:
            return time.time() - claimed.stat().st_mtime > self.abandon_after_s
        except FileNotFoundError:
            return False

    def done(self, claimed: Path) -> None:
        """The claimed result was told."""
        claimed.unlink(missing_ok=True)

    def give_back(self, claimed: Path) -> None:
        """The claimed result could not be told now: pending again, for the next run."""
        number = _CLAIMED.match(claimed.name)
        assert number is not None, claimed
        claimed.rename(self.path(int(number.group(1))))

    def orphan(self, claimed: Path) -> Path:
        """The trial was ended by someone else: keep the result aside, never tell it."""
        number = _CLAIMED.match(claimed.name)
        assert number is not None, claimed
        kept = claimed.with_name(f"trial-{number.group(1)}.orphan.json")
        claimed.rename(kept)
        return kept
