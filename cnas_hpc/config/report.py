"""The ``report`` section of ``cnas_hpc/configs/report.yaml`` (``launch/report.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnas_hpc.config.build import Count, build_section, section


@section("report")
class ReportConfig:
    """The ``report`` section of ``cnas_hpc/configs/report.yaml``.

    Attributes:
        top_k: Best trials listed and written to ``best_genotypes.json`` (>= 1).
        out_dir: Folder of the pictures and files; None = ``<output_dir>/<study>/report``.
        pictures: Write the PNGs (history, best vs time, importances, best cells).
        json: Write ``best_genotypes.json``.
        recent: Window (COMPLETE trials) of the recent throughput and the ETA (>= 1).
    """

    top_k: Count = 5
    out_dir: str | None = None
    pictures: bool = True
    json: bool = True
    recent: Count = 10

    @classmethod
    def from_mapping(cls, values: Mapping[Any, Any] | None) -> ReportConfig:
        """Build from the composed ``report`` node (a plain mapping).

        Raises:
            ConfigError: An unknown key or a value out of its domain (one line naming it).
        """
        values = dict(values or {})
        if values.get("out_dir") is not None:
            values["out_dir"] = str(values["out_dir"])
        return build_section(cls, values)
