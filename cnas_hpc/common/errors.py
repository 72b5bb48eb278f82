"""The errors that are the user's input: reported as one ``error:`` line, never a traceback.

Every message built for these errors is one line and names no secret (storage URLs appear only
through :func:`cnas_hpc.common.storage_url.mask_url`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key."""


class StudyError(RuntimeError):
    """The study cannot be used as configured; the message is one line without secrets."""


class StudyUnreachableError(StudyError):
    """The study's database cannot be reached right now (down, restarting, refusing connections).

    A user error on the submitting side (one ``error:`` line, nothing queued); a transient one
    inside a worker, whose retries wait for the database to come back
    (:func:`cnas_hpc.study.retry.is_transient`).

    Attributes:
        detail: the driver's own words (``... Connection refused``), password-free, for logs.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class WorkerError(RuntimeError):
    """A worker cannot go on (e.g. every trial of a broken config fails); one-line message."""
