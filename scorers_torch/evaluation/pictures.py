"""Pictures of an evaluation, per prompt set: a grid of sample prompts x models
with each image's scores under it (as the paper's Figures 4-6), a static HTML
page with every image and its scores, and a bar chart of the win rates.
"""

from __future__ import annotations

import html
import io
import posixpath
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bdpo_jax import storage
from scorers_torch.evaluation.outputs import Location, read_image, under
from scorers_torch.evaluation.stats import STATISTICS, Columns, Tables

FONT_SIZE = 13
LINE = FONT_SIZE + 5
GAP = 6


def _rows(columns: Columns, prompt_set: str) -> dict[tuple[str, int, int], int]:
    """(model, prompt index, image index) -> row of the score table."""
    selected = np.nonzero(columns["prompt_set"] == prompt_set)[0]
    return {
        (str(columns["model"][r]), int(columns["prompt_index"][r]), int(columns["image_index"][r])): int(r)
        for r in selected
    }


def _prompts(columns: Columns, prompt_set: str) -> dict[int, str]:
    selected = np.nonzero(columns["prompt_set"] == prompt_set)[0]
    return {int(columns["prompt_index"][r]): str(columns["prompt"][r]) for r in selected}


def sample_prompts(columns: Columns, prompt_set: str, count: int, seed: int = 0) -> list[int]:
    """A fixed random sample of the set's prompt indices, ascending."""
    indices = np.array(sorted(_prompts(columns, prompt_set)))
    chosen = np.random.default_rng(seed).choice(len(indices), min(count, len(indices)), replace=False)
    return [int(i) for i in np.sort(indices[chosen])]


def _score_lines(columns: Columns, row: int, metrics: Sequence[str]) -> list[str]:
    return [f"{m} {float(columns[m][row]):.4g}" for m in metrics]


def grid(
    columns: Columns,
    root: Location,
    prompt_set: str,
    models: Sequence[str],
    metrics: Sequence[str],
    prompt_indices: Sequence[int],
    image_index: int = 0,
    cell: int = 256,
) -> Image.Image:
    """Rows: prompts; columns: models; each cell image ``image_index`` (the same seed in every column)."""
    font = ImageFont.load_default(size=FONT_SIZE)
    rows, prompts = _rows(columns, prompt_set), _prompts(columns, prompt_set)
    shown = [rows[key] for key in ((m, p, image_index) for p in prompt_indices for m in models) if key in rows]
    score_lines = {row: _score_lines(columns, row, metrics) for row in shown}
    texts = [*models, *(line for lines in score_lines.values() for line in lines)]
    column = max([cell, *(int(font.getlength(text)) + 8 for text in texts)])  # a score line never runs into the next
    label_width, text_height, header, pitch = cell, LINE * len(metrics) + 6, LINE + 8, column + GAP
    width = label_width + pitch * len(models)
    height = header + (cell + text_height) * len(prompt_indices)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, model in enumerate(models):
        draw.text((label_width + j * pitch + 4, 4), model, fill="black", font=font)
    wrap = max(8, int(cell / (0.55 * FONT_SIZE)))
    for i, prompt_index in enumerate(prompt_indices):
        top = header + i * (cell + text_height)
        lines = textwrap.wrap(f"#{prompt_index}: {prompts[prompt_index]}", wrap)[: (cell + text_height) // LINE]
        for k, line in enumerate(lines):
            draw.text((4, top + k * LINE), line, fill="black", font=font)
        for j, model in enumerate(models):
            row = rows.get((model, prompt_index, image_index))
            left = label_width + j * pitch
            if row is None:
                draw.text((left + 4, top + 4), "(no image)", fill="gray", font=font)
                continue
            image = read_image(under(root, str(columns["image"][row])))
            resample = Image.Resampling.NEAREST if image.width < cell else Image.Resampling.LANCZOS
            canvas.paste(image.resize((cell, cell), resample), (left, top))
            for k, line in enumerate(score_lines[row]):
                draw.text((left + 4, top + cell + 3 + k * LINE), line, fill="black", font=font)
    return canvas


def html_page(
    columns: Columns,
    root: Location,
    page: Location,
    prompt_set: str,
    models: Sequence[str],
    metrics: Sequence[str],
    table_markdown: str,
    chart: Location | None = None,
) -> str:
    """Every image of the set with its scores, one section per prompt; links relative to ``page``."""
    rows, prompts = _rows(columns, prompt_set), _prompts(columns, prompt_set)
    images = sorted({key[2] for key in rows})
    page_folder = Path(page).parent.as_posix()
    root_from_page = posixpath.relpath(Path(root).as_posix(), page_folder) + "/"
    out = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(prompt_set)}</title>",
        "<style>body{font-family:sans-serif} figure{display:inline-block;margin:2px;font-size:11px}"
        " img{width:160px;height:160px;image-rendering:pixelated} td{vertical-align:top} pre{font-size:12px}</style>",
        f"<h1>{html.escape(prompt_set)}</h1>",
        f"<pre>{html.escape(table_markdown)}</pre>",
    ]
    if chart is not None:
        source = html.escape(posixpath.relpath(Path(chart).as_posix(), page_folder))
        out.insert(-1, f"<img src='{source}' style='width:720px;height:auto'>")
    for prompt_index in sorted(prompts):
        out.append(f"<h3>#{prompt_index}: {html.escape(prompts[prompt_index])}</h3><table>")
        for model in models:
            out.append(f"<tr><td><b>{html.escape(model)}</b></td><td>")
            for image_index in images:
                row = rows.get((model, prompt_index, image_index))
                if row is None:
                    continue
                caption = "<br>".join(html.escape(line) for line in _score_lines(columns, row, metrics))
                source = html.escape(root_from_page + str(columns["image"][row]))
                out.append(f"<figure><img loading='lazy' src='{source}'><figcaption>{caption}</figcaption></figure>")
            out.append("</td></tr>")
        out.append("</table>")
    return "\n".join(out) + "\n"


def win_rate_chart(tables: Tables, prompt_set: str, path: Location) -> None:
    """Grouped bars: one group per metric, one bar per comparison, the interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, comparisons = tables.metrics, tables.comparisons
    width = 0.8 / max(1, len(comparisons))
    figure, axes = plt.subplots(figsize=(max(5.0, 1.2 * len(metrics) * max(1, len(comparisons)) ** 0.5 + 2), 3.6))
    for k, (a, b) in enumerate(comparisons):
        cells = [tables.win_rate(a, b, prompt_set, m) for m in metrics]
        rates = np.array([100 * c.win_rate for c in cells])
        errors = np.array([[100 * (c.win_rate - c.low) for c in cells], [100 * (c.high - c.win_rate) for c in cells]])
        x = np.arange(len(metrics)) + (k - (len(comparisons) - 1) / 2) * width
        axes.bar(x, rates, width, yerr=errors, capsize=3, label=f"{a} vs {b}")
    axes.axhline(50, color="gray", linestyle="--", linewidth=1)
    axes.set_xticks(np.arange(len(metrics)), metrics)
    axes.set_ylim(0, 100)
    axes.set_ylabel("win rate %")
    axes.set_title(f"{prompt_set}: {STATISTICS[tables.statistic]} win rate, {tables.confidence:.0%} interval")
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    storage.write_bytes(path, buffer.getvalue())
