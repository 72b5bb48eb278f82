"""Results of the evaluation phase as tables: our cells beside published ones, same settings.

Only rows evaluated with the SAME settings (protocol, probe, data, seed: the row's
``protocol_hash``) are put side by side; across evaluations a cell (by genotype) appears once,
the evaluation's own row first. ``results.md`` and ``results.csv`` land in the evaluation's
results folder; the study report shows the rows of its study's trials.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy
from tabulate import tabulate

from cnas_hpc.evaluate import store

COLUMNS = (
    "cell",
    "source",
    "state",
    "test error %",
    "test acc %",
    "probe kNN %",
    "probe linear %",
    "params M",
    "MACs M",
    "epochs",
    "wall h",
    "evaluation",
)


def comparable_rows(engine: sqlalchemy.Engine, name: str) -> list[store.Row]:
    """Rows of evaluation ``name``, then rows of other evaluations with the same settings whose
    genotype it does not have (e.g. presets evaluated on their own)."""
    own = store.rows(engine, name)
    if not own:
        return []
    seen = {row.genotype_hash for row in own}
    others = []
    for row in store.all_rows(engine):
        comparable = row.name != name and row.protocol_hash == own[0].protocol_hash
        if comparable and row.genotype_hash not in seen and row.state == store.COMPLETE:
            seen.add(row.genotype_hash)
            others.append(row)
    return own + others


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _source(row: store.Row) -> str:
    if row.trial_number is not None and row.study_name is not None:
        return f"{row.study_name} trial {row.trial_number}"
    return row.source


def table_rows(rows: Sequence[store.Row]) -> list[list[str]]:
    """One list of strings per row, in :data:`COLUMNS` order."""
    out = []
    for row in rows:
        out.append(
            [
                row.cell_key,
                _source(row),
                row.state if row.state != store.FAIL else f"FAIL: {(row.fail_reason or '')[:40]}",
                _percent(row.test_error),
                _percent(row.test_accuracy),
                _percent(row.probe_knn_accuracy),
                _percent(row.probe_linear_accuracy),
                "-" if row.params is None else f"{row.params / 1e6:.2f}",
                "-" if row.macs is None else f"{row.macs / 1e6:.0f}",
                f"{row.epochs_done or 0}/{row.epochs or '?'}",
                "-" if row.wall_s is None else f"{row.wall_s / 3600:.2f}",
                row.name,
            ]
        )
    return out


def format_results(rows: Sequence[store.Row], fmt: str = "simple") -> str:
    """The rows as a text table (``fmt``: any tabulate format, e.g. ``github`` for Markdown)."""
    if not rows:
        return "(no evaluation yet)"
    return tabulate(table_rows(rows), COLUMNS, tablefmt=fmt, disable_numparse=True)


def setup_line(row: store.Row | None) -> str:
    """What the rows were made with, from the planned settings a row records: data source and
    fraction, protocol (name, size, epochs), method and seed."""
    if row is None:
        return "Protocol `?`"
    try:
        decisive = json.loads(row.protocol)
    except ValueError:
        return f"Protocol `{row.protocol_name}`"
    data, protocol = decisive.get("data") or {}, decisive.get("protocol") or {}
    source = data.get("source", "?")
    size = f"{protocol.get('cells', '?')} cells x {protocol.get('channels', '?')} channels"
    return (
        f"Data `{source}` (data.fraction={data.get('fraction', '?')}, "
        f"max_images={data.get('max_images')}); protocol `{row.protocol_name}` ({size}, "
        f"{protocol.get('epochs', '?')} epochs, batch {protocol.get('batch_size', '?')}, "
        f"max_steps_per_epoch={protocol.get('max_steps_per_epoch')}); method `{row.method}`, "
        f"seed {row.seed}"
    )


def write_results(engine: sqlalchemy.Engine, name: str, folder: Path) -> tuple[str, list[Path]]:
    """Write ``results.md`` and ``results.csv`` of evaluation ``name`` into ``folder``.

    Returns:
        The plain-text table and the paths written.
    """
    rows = comparable_rows(engine, name)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / "results.md", folder / "results.csv"
    md.write_text(
        f"# Evaluation `{name}`\n\n{setup_line(rows[0] if rows else None)}; every row trained "
        "with the same settings (protocol, data, seed).\n\n"
        + format_results(rows, "github")
        + "\n",
        encoding="utf-8",
    )
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "cell", "source", "study", "trial", "state", "test_accuracy", "test_error",
                "probe_knn_accuracy", "probe_linear_accuracy", "params", "macs", "epochs_done",
                "epochs", "wall_s", "evaluation", "protocol", "genotype",
            ]
        )  # fmt: skip
        for row in rows:
            writer.writerow(
                [
                    row.cell_key, row.source, row.study_name, row.trial_number, row.state,
                    row.test_accuracy, row.test_error, row.probe_knn_accuracy,
                    row.probe_linear_accuracy, row.params, row.macs, row.epochs_done, row.epochs,
                    row.wall_s, row.name, row.protocol_name, row.genotype,
                ]
            )  # fmt: skip
    return format_results(rows), [md, csv_path]


def study_rows(engine: sqlalchemy.Engine, study_name: str) -> list[store.Row]:
    """Every evaluation row of the trials of ``study_name`` (for the study report)."""
    inspector = sqlalchemy.inspect(engine)
    if not inspector.has_table(store.EVALUATIONS.name):
        return []
    return [row for row in store.all_rows(engine) if row.study_name == study_name]
