"""The ``report`` section of ``cnas_hpc/configs/report.yaml`` (``launch/report.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnas_hpc.config.build import build_section


@dataclass(frozen=True)
class ReportConfig:
    """The ``report`` section of ``cnas_hpc/configs/report.yaml``.

    Attributes:
        top_k: Best trials listed and written to ``best_genotypes.json`` (>= 1).
        out_dir: Folder of the pictures and files; None = ``<output_dir>/<study>/report``.
        pictures: Write the PNGs (history, best vs time, importances, best cells).
        json: Write ``best_genotypes.json``.
        recent: Window (COMPLETE trials) of the recent throughput and the ETA (>= 1).
    """

    top_k: int = 5
    out_dir: str | None = None
    pictures: bool = True
    json: bool = True
    recent: int = 10

    def __post_init__(self) -> None:
        for name in ("top_k", "recent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"report.{name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[Any, Any] | None) -> ReportConfig:
        """Build from the composed ``report`` node (a plain mapping).

        Raises:
            ConfigError: An unknown key or a value out of its domain (one line naming it).
        """
        values = dict(values or {})
        if values.get("out_dir") is not None:
            values["out_dir"] = str(values["out_dir"])
        return build_section(cls, "report", values)
