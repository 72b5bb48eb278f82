"""The errors that are the user's input: reported as one ``error:`` line, never a traceback.

Every message built for these errors is one line and names no secret (storage URLs appear only
through :func:`cnas_hpc.common.storage_url.mask_url`).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key."""


class StudyError(RuntimeError):
    """The study cannot be used as configured; the message is one line without secrets."""
