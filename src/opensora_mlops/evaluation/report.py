"""The evaluation report: an HTML page with sample GIFs, score tables and matplotlib plots (PNG).

Everything is written under one directory (``data/08_reporting/evaluation`` by default) with relative
links, so the folder can be opened in a browser, logged to MLflow as an artifact or versioned by DVC.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


@dataclass
class SampleGif:
    group: str
    prompt: str
    path: str  # relative to the report directory


@dataclass
class ReportContent:
    """What the report shows. ``vbench``: {group: {dimension: score}}; ``methods``: {dimension: text};
    ``adherence``: {group: {"colour", "shape", "direction", "adherence", "n"}}; ``val_loss``: rows
    ``group, range_start, range_end, timestep, loss``; ``notes``: free text lines."""

    title: str
    vbench: dict[str, dict[str, float]] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    not_implemented: list[str] = field(default_factory=list)
    not_applicable: dict[str, list[str]] = field(default_factory=dict)
    adherence: dict[str, dict[str, float]] = field(default_factory=dict)
    val_loss: pd.DataFrame | None = None
    samples: list[SampleGif] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _grouped_bars(
    data: Mapping[str, Mapping[str, float]], keys: Sequence[str], title: str, path: Path
) -> Path:
    groups = list(data)
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) + 2), 4.0))
    for i, group in enumerate(groups):
        values = [float(data[group].get(k, np.nan)) for k in keys]
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, values, width, label=group)
    ax.set_xticks(x)
    ax.set_xticklabels(keys, rotation=30, ha="right")
    ax.set_ylim(0, 1.25)  # headroom for the legend above bars at 1.0
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=max(1, len(groups)), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_vbench(vbench: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    keys = sorted({k for scores in vbench.values() for k in scores})
    return _grouped_bars(vbench, keys, "VBench-style dimensions", Path(path))


def plot_adherence(adherence: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    return _grouped_bars(
        adherence, ["colour", "shape", "direction", "adherence"], "Prompt adherence", Path(path)
    )


def plot_val_loss(table: pd.DataFrame, path: str | Path) -> Path:
    """Loss against timestep, one line per group, range boundaries shaded."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for group, rows in table.groupby("group", sort=False):
        per_t = rows.groupby("timestep", sort=True)["loss"].mean()
        ax.plot(per_t.index, per_t.values, marker="o", label=str(group))
    for i, (start, _end) in enumerate(sorted(set(zip(table["range_start"], table["range_end"])))):
        if i % 2:
            ax.axvspan(start, _end, color="grey", alpha=0.1)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("IDDPM loss (MSE + VB)")
    ax.set_yscale("log")
    ax.set_title("Validation loss by timestep (fixed noise)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _html_table(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[str], first: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [first, *columns])
    body = []
    for name, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                cells.append("<td>n/a</td>")
            elif c == "n":
                cells.append(f"<td>{int(v)}</td>")
            elif isinstance(v, float):
                cells.append(f"<td>{v:.4f}</td>")
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append(f"<tr><th>{html.escape(str(name))}</th>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_report(content: ReportContent, out_dir: str | Path) -> dict[str, str]:
    """Write ``index.html`` and the plots under ``out_dir``; returns {name: path} of what was written."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(content.title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".gifs{display:flex;flex-wrap:wrap;gap:12px}.gifs figure{margin:0;width:200px}"
        ".gifs img{width:200px;image-rendering:pixelated}figcaption{font-size:11px}</style></head><body>",
        f"<h1>{html.escape(content.title)}</h1>",
    ]
    if content.vbench:
        written["vbench_plot"] = str(plot_vbench(content.vbench, out / "plots" / "vbench_dimensions.png"))
        dims = sorted({k for s in content.vbench.values() for k in s})
        by_dim = {d: {g: content.vbench[g].get(d) for g in content.vbench} for d in dims}
        methods = {d: {"method": content.methods.get(d, "")} for d in dims}
        parts += [
            "<h2>VBench-style dimensions</h2>",
            "<img src='plots/vbench_dimensions.png' alt='VBench dimension scores'>",
            _html_table(by_dim, list(content.vbench), "dimension"),
            "<h3>Methods</h3>",
            _html_table(methods, ["method"], "dimension"),
        ]
        if content.not_implemented:
            parts.append(
                "<p>Dimensions in the suite that are not implemented here (not scored): "
                + html.escape(", ".join(content.not_implemented))
                + "</p>"
            )
        for dim, prompts in content.not_applicable.items():
            parts.append(
                f"<p>{html.escape(dim)}: not scored for {len(prompts)} prompt(s) outside the synthetic vocabulary.</p>"
            )
    if content.adherence:
        written["adherence_plot"] = str(
            plot_adherence(content.adherence, out / "plots" / "prompt_adherence.png")
        )
        parts += [
            "<h2>Prompt adherence (synthetic vocabulary)</h2>",
            "<p>Colour, shape and motion direction recovered from the frames by classical computer vision "
            "(segmentation against the dominant background colour, blob extent/circularity/polygon vertices, "
            "centroid trajectory) and compared with the caption. Real clips are the upper bound.</p>",
            "<img src='plots/prompt_adherence.png' alt='prompt adherence'>",
            _html_table(content.adherence, ["colour", "shape", "direction", "adherence", "n"], "group"),
        ]
    if content.val_loss is not None and len(content.val_loss):
        written["val_loss_plot"] = str(
            plot_val_loss(content.val_loss, out / "plots" / "val_loss_by_timestep.png")
        )
        ranges = (
            content.val_loss.groupby(["group", "range_start", "range_end"], sort=True)["loss"]
            .mean()
            .reset_index()
        )
        rows: dict[str, dict[str, Any]] = {}
        for _, r in ranges.iterrows():
            rows.setdefault(str(r["group"]), {})[f"[{int(r['range_start'])}, {int(r['range_end'])})"] = float(
                r["loss"]
            )
        columns = list(next(iter(rows.values())).keys()) if rows else []
        parts += [
            "<h2>Validation loss by timestep range</h2>",
            "<img src='plots/val_loss_by_timestep.png' alt='validation loss by timestep'>",
            _html_table(rows, columns, "model"),
        ]
    if content.samples:
        parts.append("<h2>Samples</h2>")
        for group in dict.fromkeys(s.group for s in content.samples):
            figures = "".join(
                f"<figure><img src='{html.escape(s.path)}' alt='{html.escape(s.prompt)}'>"
                f"<figcaption>{html.escape(s.prompt)}</figcaption></figure>"
                for s in content.samples
                if s.group == group
            )
            parts += [f"<h3>{html.escape(group)}</h3>", f"<div class='gifs'>{figures}</div>"]
    if content.notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in content.notes] + ["</ul>"]
    if content.settings:
        parts += [
            "<h2>Settings</h2>",
            f"<pre>{html.escape(json.dumps(content.settings, indent=2, default=str))}</pre>",
        ]
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    written["html"] = str(index)
    return written
