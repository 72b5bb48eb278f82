"""Results of the evaluation phase as tables: our cells beside published ones, same settings.

Only rows evaluated with the SAME settings (protocol, probe, data, seed: the row's
``protocol_hash``) are put side by side; across evaluations a cell (by genotype) appears once,
the evaluation's own row first. ``results.md`` and ``results.csv`` land in the evaluation's
results folder; the study report shows the rows of its study's trials.

When the source study recorded the cost of its cells (a cost-aware search: ``cnas:cost_*``,
passed in as ``costs`` by ``(study, trial)``), the tables put them beside the accuracy:
``search params M``, ``search MACs M`` (of the evaluation-size network the search costed) and
``latency ms`` (measured by the search, on the device it names), each column only when some
row has it. Without costs the tables are unchanged.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
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


#: The search's costs beside the accuracy: (column, cost name, scale, format).
COST_COLUMNS = (
    ("search params M", "params", 1e6, "{:.2f}"),
    ("search MACs M", "macs", 1e6, "{:.0f}"),
    ("latency ms", "latency_ms", 1.0, "{:.2f}"),
)

#: Costs by ``(study name, trial number)``: cost name -> value, plus ``device``/``network``.
Costs = Mapping[tuple[str, int], Mapping[str, object]]


def _costs_of(row: store.Row, costs: Costs | None) -> Mapping[str, object]:
    if not costs or row.study_name is None or row.trial_number is None:
        return {}
    return costs.get((row.study_name, row.trial_number), {})


def cost_columns(
    rows: Sequence[store.Row], costs: Costs | None
) -> list[tuple[str, str, float, str]]:
    """The cost columns some row has a value for (none without costs)."""
    present = {name for row in rows for name in _costs_of(row, costs)}
    return [column for column in COST_COLUMNS if column[1] in present]


def columns(rows: Sequence[store.Row], costs: Costs | None = None) -> list[str]:
    """The table's headers: :data:`COLUMNS`, with the cost columns after ``test acc %``."""
    names = list(COLUMNS)
    at = names.index("test acc %") + 1
    return names[:at] + [c[0] for c in cost_columns(rows, costs)] + names[at:]


def cost_note(rows: Sequence[store.Row], costs: Costs | None) -> str:
    """One line saying what the cost columns are (empty without them)."""
    if not cost_columns(rows, costs):
        return ""
    found = [_costs_of(row, costs) for row in rows]
    networks = sorted({str(c["network"]) for c in found if "network" in c})
    devices = sorted({str(c["device"]) for c in found if "device" in c and "latency_ms" in c})
    text = "search params / MACs / latency: as the search recorded them for each cell"
    if networks:
        text += f" ({', '.join(networks)} network)"
    if devices:
        text += f"; latency on {', '.join(devices)}"
    return text


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


def _cost(value: object, scale: float, fmt: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return fmt.format(float(value) / scale)
    return "-"


def table_rows(rows: Sequence[store.Row], costs: Costs | None = None) -> list[list[str]]:
    """One list of strings per row, in :func:`columns` order."""
    extra = cost_columns(rows, costs)
    out = []
    for row in rows:
        found = _costs_of(row, costs)
        out.append(
            [
                row.cell_key,
                _source(row),
                row.state if row.state != store.FAIL else f"FAIL: {(row.fail_reason or '')[:40]}",
                _percent(row.test_error),
                _percent(row.test_accuracy),
                *(_cost(found.get(name), scale, fmt) for _, name, scale, fmt in extra),
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


def format_results(
    rows: Sequence[store.Row], fmt: str = "simple", costs: Costs | None = None
) -> str:
    """The rows as a text table (``fmt``: any tabulate format, e.g. ``github`` for Markdown),
    with the search's costs beside the accuracy when ``costs`` has some (a line under the
    table says what they are)."""
    if not rows:
        return "(no evaluation yet)"
    table = tabulate(
        table_rows(rows, costs), columns(rows, costs), tablefmt=fmt, disable_numparse=True
    )
    note = cost_note(rows, costs)
    return table + (f"\n\n{note}" if note else "")


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


def write_results(
    engine: sqlalchemy.Engine, name: str, folder: Path, costs: Costs | None = None
) -> tuple[str, list[Path]]:
    """Write ``results.md`` and ``results.csv`` of evaluation ``name`` into ``folder``.

    ``costs``: the search's costs of the rows' trials (see the module docstring); the CSV has
    their columns (``search_params``, ``search_macs``, ``latency_ms``, ``cost_device``)
    always, empty where unknown.

    Returns:
        The plain-text table and the paths written.
    """
    rows = comparable_rows(engine, name)
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / "results.md", folder / "results.csv"
    md.write_text(
        f"# Evaluation `{name}`\n\n{setup_line(rows[0] if rows else None)}; every row trained "
        "with the same settings (protocol, data, seed).\n\n"
        + format_results(rows, "github", costs)
        + "\n",
        encoding="utf-8",
    )
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "cell", "source", "study", "trial", "state", "test_accuracy", "test_error",
                "probe_knn_accuracy", "probe_linear_accuracy", "params", "macs", "epochs_done",
                "epochs", "wall_s", "evaluation", "protocol", "genotype", "search_params",
                "search_macs", "latency_ms", "cost_device",
            ]
        )  # fmt: skip
        for row in rows:
            writer.writerow(
                [
                    row.cell_key, row.source, row.study_name, row.trial_number, row.state,
                    row.test_accuracy, row.test_error, row.probe_knn_accuracy,
                    row.probe_linear_accuracy, row.params, row.macs, row.epochs_done, row.epochs,
                    row.wall_s, row.name, row.protocol_name, row.genotype,
                    *(_costs_of(row, costs).get(k) for k in ("params", "macs", "latency_ms")),
                    _costs_of(row, costs).get("device"),
                ]
            )  # fmt: skip
    return format_results(rows, costs=costs), [md, csv_path]


def study_rows(engine: sqlalchemy.Engine, study_name: str) -> list[store.Row]:
    """Every evaluation row of the trials of ``study_name`` (for the study report)."""
    inspector = sqlalchemy.inspect(engine)
    if not inspector.has_table(store.EVALUATIONS.name):
        return []
    return [row for row in store.all_rows(engine) if row.study_name == study_name]
