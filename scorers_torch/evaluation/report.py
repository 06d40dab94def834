"""The paper's tables: rows ``A vs B``, columns prompt set x metric, each cell
the win rate in percent with its interval, and the row's worst cell (the
balance BalancedDPO claims). Printed, and written as markdown, CSV and JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from bdpo_jax import storage
from scorers_torch.evaluation.outputs import Location, under
from scorers_torch.evaluation.stats import STATISTICS, Tables


def win_rate_grid(tables: Tables) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Column headers (set, metric) and one row of cells per comparison, the last cell the worst."""
    columns = [(s, m) for s in tables.prompt_sets for m in tables.metrics]
    rows = []
    for a, b in tables.comparisons:
        cells = [f"{a} vs {b}"]
        for s, m in columns:
            w = tables.win_rate(a, b, s, m)
            cells.append(f"{100 * w.win_rate:.1f} [{100 * w.low:.1f}, {100 * w.high:.1f}]")
        worst = tables.worst(a, b)
        cells.append(f"{100 * worst.win_rate:.1f} ({worst.prompt_set} {worst.metric})")
        rows.append(cells)
    return columns, rows


def model_score_grid(tables: Tables, field: str) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """One row per model: ``field`` ("best" or "mean") with its interval per set and metric."""
    columns = [(s, m) for s in tables.prompt_sets for m in tables.metrics]
    scores = {(r.model, r.prompt_set, r.metric): r for r in tables.model_scores}
    rows = []
    for model in dict.fromkeys(r.model for r in tables.model_scores):
        cells = [model]
        for s, m in columns:
            r = scores[model, s, m]
            value, low, high = getattr(r, field), getattr(r, f"{field}_low"), getattr(r, f"{field}_high")
            cells.append(f"{value:.4g} [{low:.4g}, {high:.4g}]")
        rows.append(cells)
    return columns, rows


def format_text(columns: list[tuple[str, str]], rows: list[list[str]], corner: str, last: str | None) -> str:
    """Aligned plain text with two header lines: prompt set, then metric."""
    sets = [""] + [s if i == 0 or columns[i - 1][0] != s else "" for i, (s, _) in enumerate(columns)]
    metrics = [corner] + [m for _, m in columns]
    if last:
        sets, metrics = [*sets, ""], [*metrics, last]
    widths = [max(len(line[i]) for line in [sets, metrics, *rows]) for i in range(len(metrics))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in [sets, metrics]]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_markdown(columns: list[tuple[str, str]], rows: list[list[str]], corner: str, last: str | None) -> str:
    header = [corner] + [f"{s} {m}" for s, m in columns] + ([last] if last else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def win_rate_text(tables: Tables) -> str:
    columns, rows = win_rate_grid(tables)
    title = (
        f"Win rate % of A's {STATISTICS[tables.statistic]} over B's (ties half), "
        f"[{tables.confidence:.0%} bootstrap interval]"
    )
    return title + "\n" + format_text(columns, rows, "A vs B", "worst")


def markdown(tables: Tables) -> str:
    parts = [
        f"## Win rate (%), A's {STATISTICS[tables.statistic]} over B's; ties count half; "
        f"[{tables.confidence:.0%} bootstrap interval]",
        format_markdown(*win_rate_grid(tables), "A vs B", "worst"),
        "## Mean best-of-N score per prompt",
        format_markdown(*model_score_grid(tables, "best"), "model", None),
        "## Mean score per image",
        format_markdown(*model_score_grid(tables, "mean"), "model", None),
    ]
    return "\n\n".join(parts) + "\n"


def write_tables(tables: Tables, directory: Location) -> dict[str, Location]:
    """tables.md, win_rates.csv, model_scores.csv (one row per cell) and results.json."""
    texts = {
        "markdown": ("tables.md", markdown(tables)),
        "win_rates_csv": ("win_rates.csv", _csv(tables.win_rates)),
        "model_scores_csv": ("model_scores.csv", _csv(tables.model_scores)),
        "json": ("results.json", json.dumps(tables.to_json(), indent=1) + "\n"),
    }
    paths = {key: under(directory, name) for key, (name, _) in texts.items()}
    for key, (_, text) in texts.items():
        storage.write_text(paths[key], text)
    return paths


def _csv(records) -> str:
    buffer = io.StringIO()
    fields = [f.name for f in dataclasses.fields(records[0])] if records else []
    writer = csv.DictWriter(buffer, fields)
    writer.writeheader()
    writer.writerows(dataclasses.asdict(r) for r in records)
    return buffer.getvalue()
