"""The evaluation report: an HTML page with sample GIFs, score tables and matplotlib plots (PNG).

The page opens with the verdict (:mod:`opensora_mlops.evaluation.verdict`): the trained model against
the untrained one and the registered champion, per attribute, each difference with its 95% interval;
a difference whose interval includes 0 or lies below it is marked NOT BETTER in red (CSS class
``not-better``). Then the run id, git commit and a link to the MLflow run.

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

from opensora_mlops.evaluation.verdict import (  # noqa: E402
    HEADLINE_METRIC,
    VERDICT_METRICS,
    Comparison,
    Difference,
    Verdict,
    evaluation_verdict,
)

#: Adherence metrics in the order the report and the demo summary show them, with their labels.
ADHERENCE_ROWS: dict[str, str] = {
    "background": "background (right and stable)",
    "background_stable": "background stable",
    "colour": "colour",
    "shape": "shape",
    "direction": "direction",
    "adherence": "adherence (mean of 4)",
    "overall": "overall (all 4 right)",
}


@dataclass
class SampleGif:
    group: str
    prompt: str
    path: str  # relative to the report directory
    split: str | None = None  # "seen" / "held-out"


@dataclass
class ReportContent:
    """What the report shows. ``vbench``: {group: {dimension: score}} (``vbench_ci``: {group:
    {dimension_low, dimension_high}}); ``methods``: {dimension: text}; ``adherence``: {group: {metric,
    metric_low, metric_high, "n", "prompts"}} (a metric without _low/_high is shown without interval),
    ``adherence_splits``: {split name: the same for that split's prompts}; ``chance``: {metric: score of
    a uniform guess}; ``splits``: {split: prompts}; ``val_loss``: rows ``group, range_start, range_end,
    timestep, loss`` (and ``x0_mse``); ``notes``: free text lines; ``verdict``: the header (None: one
    computed from ``adherence`` alone, without the champion or the per-prompt pairing)."""

    title: str
    vbench: dict[str, dict[str, float]] = field(default_factory=dict)
    vbench_ci: dict[str, dict[str, float]] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    not_implemented: list[str] = field(default_factory=list)
    not_applicable: dict[str, list[str]] = field(default_factory=dict)
    adherence: dict[str, dict[str, float]] = field(default_factory=dict)
    adherence_splits: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)
    val_loss: pd.DataFrame | None = None
    samples: list[SampleGif] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None


def _grouped_bars(
    data: Mapping[str, Mapping[str, float]],
    keys: Sequence[str],
    title: str,
    path: Path,
    intervals: Mapping[str, Mapping[str, float]] | None = None,
    chance: Mapping[str, float] | None = None,
) -> Path:
    """Bars per key and group; ``intervals`` {group: {key_low, key_high}} as error bars, ``chance``
    {key: value} as a dashed mark across the key's bars."""
    groups = list(data)
    x = np.arange(len(keys))
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) + 2), 4.0))
    for i, group in enumerate(groups):
        values = np.array([float(data[group].get(k, np.nan)) for k in keys])
        bounds = (intervals or {}).get(group, data[group])
        low = np.array([float(bounds.get(f"{k}_low", v)) for k, v in zip(keys, values)])
        high = np.array([float(bounds.get(f"{k}_high", v)) for k, v in zip(keys, values)])
        errors = np.nan_to_num(np.stack([values - low, high - values]).clip(min=0.0))
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, values, width, label=group,
               yerr=errors if errors.any() else None, capsize=3)
    for j, key in enumerate(keys):
        if chance and key in chance:
            ax.hlines(chance[key], j - 0.45, j + 0.45, colors="black", linestyles="dashed", linewidth=1, zorder=3,
                      label="chance" if j == min(i for i, k in enumerate(keys) if k in chance) else None)
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


def plot_vbench(
    vbench: Mapping[str, Mapping[str, float]],
    path: str | Path,
    intervals: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    keys = sorted({k for scores in vbench.values() for k in scores})
    return _grouped_bars(vbench, keys, "VBench-style dimensions (95% CI)", Path(path), intervals=intervals)


def plot_adherence(
    adherence: Mapping[str, Mapping[str, float]],
    path: str | Path,
    chance: Mapping[str, float] | None = None,
    title: str = "Prompt adherence (95% CI; dashed: chance)",
) -> Path:
    keys = [k for k in ADHERENCE_ROWS if any(k in v for v in adherence.values())]
    return _grouped_bars(adherence, keys, title, Path(path), chance=chance)


def format_interval(values: Mapping[str, float], key: str, digits: int = 2) -> str:
    """``mean [low, high]`` of ``key`` in ``values`` (just the mean without an interval; "n/a" if absent)."""
    mean = values.get(key)
    if mean is None or not np.isfinite(mean):
        return "n/a"
    low, high = values.get(f"{key}_low"), values.get(f"{key}_high")
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def adherence_rows(
    adherence: Mapping[str, Mapping[str, float]], chance: Mapping[str, float]
) -> dict[str, dict[str, str]]:
    """{metric label: {"chance": ..., group: "mean [low, high]", ...}} for the report and the demo."""
    rows: dict[str, dict[str, str]] = {}
    for key, label in ADHERENCE_ROWS.items():
        if not any(key in v for v in adherence.values()):
            continue
        guess = chance.get(key)
        rows[label] = {"chance": f"{guess:.3f}" if guess is not None else "n/a"}
        rows[label] |= {group: format_interval(values, key) for group, values in adherence.items()}
    counts = {g: f"{int(v.get('prompts', 0))} prompts, {int(v.get('n', 0))} clips" for g, v in adherence.items()}
    rows["scored"] = {"chance": ""} | counts
    return rows


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
    ax.set_ylabel("training objective's loss")
    ax.set_yscale("log")
    ax.set_title("Validation loss by timestep (fixed noise)")
    if "x0_mse" in table.columns:
        for group, rows in table.groupby("group", sort=False):
            per_t = rows.groupby("timestep", sort=True)["x0_mse"].mean()
            ax.plot(per_t.index, per_t.values, marker="x", linestyle="dotted", label=f"{group} x̂0 MSE")
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


def _difference_cell(diff: Difference | None) -> str:
    if diff is None:
        return "<td>n/a</td>"
    text = f"{diff.estimate:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]"
    if diff.better:
        return f"<td class='better'>{text}</td>"
    why = " (1 prompt: no interval)" if diff.prompts < 2 else ""
    return f"<td class='not-better'>{text} <strong>NOT BETTER</strong>{why}</td>"


def _comparison_line(comparison: Comparison) -> str:
    label = html.escape(comparison.label)
    if not comparison.available:
        return f"<p class='comparison'>Trained vs {label}: {html.escape(comparison.note)}.</p>"
    headline = comparison.differences.get(HEADLINE_METRIC)
    if headline is None:
        return f"<p class='comparison'>Trained vs {label}: no {HEADLINE_METRIC} score to compare.</p>"
    word, css = ("BETTER", "better") if comparison.better else ("NOT BETTER", "not-better")
    return (
        f"<p class='comparison {css}'>Trained vs {label}: <strong>{word}</strong> — {HEADLINE_METRIC} "
        f"{headline.estimate:+.3f} [{headline.low:+.3f}, {headline.high:+.3f}] "
        f"({html.escape(headline.method)}, {headline.prompts} prompts)</p>"
    )


def verdict_html(verdict: Verdict, title: str) -> str:
    """The report's opening section: the title, one line per baseline, the per-attribute table and the run."""
    pct = f"{verdict.confidence:.0%}"
    parts = [
        "<header id='verdict' class='verdict'>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Verdict</h2>",
        *(_comparison_line(c) for c in verdict.comparisons),
    ]
    if verdict.trained:
        columns = [("trained", verdict.trained), ("untrained", verdict.untrained)]
        if verdict.champion:
            columns.append((verdict.champion_label or "champion", verdict.champion))
        available = [c for c in verdict.comparisons if c.available]
        head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
        head += "".join(f"<th>trained − {html.escape(c.name)} ({pct} CI)</th>" for c in available)
        rows = []
        for metric in VERDICT_METRICS:
            if metric not in verdict.trained:
                continue
            cells = "".join(f"<td>{format_interval(values, metric, 3)}</td>" for _, values in columns)
            cells += "".join(_difference_cell(c.differences.get(metric)) for c in available)
            rows.append(f"<tr><th>{html.escape(ADHERENCE_ROWS.get(metric, metric))}</th>{cells}</tr>")
        parts.append(f"<table class='verdict-table'><thead><tr><th>prompt adherence</th>{head}</tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
        methods = "; ".join(
            f"trained − {c.name}: " + ", ".join(sorted({d.method for d in c.differences.values()}))
            for c in available
        )
        parts.append(
            f"<p class='method'>Differences: trained minus baseline with a {pct} bootstrap interval ("
            + html.escape(methods or "none")
            + "). BETTER only when the whole interval lies above 0, over at least 2 prompts.</p>"
        )
    run = verdict.run
    if run.get("run_id"):
        link = (f"<a href='{html.escape(run['url'])}'>{html.escape(run['run_id'])}</a>" if run.get("url")
                else html.escape(run["run_id"]))
        uri = run.get("tracking_uri") or ""
        store = f" (tracking URI {html.escape(uri)}" if uri else ""
        if uri and not uri.startswith(("http://", "https://")):
            store += f"; the link opens once <code>mlflow ui --backend-store-uri {html.escape(uri)}</code> runs"
        store += ")" if uri else ""
        parts.append(f"<p class='run'>MLflow run {link}{store} · git commit "
                     f"<code>{html.escape(run.get('git_commit') or 'unknown')}</code></p>")
    else:
        parts.append("<p class='run'>No MLflow run (tracking disabled) · git commit "
                     f"<code>{html.escape(run.get('git_commit') or 'unknown')}</code></p>")
    parts.append("</header>")
    return "\n".join(parts)


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
        ".gifs img{width:200px;image-rendering:pixelated}figcaption{font-size:11px}"
        ".verdict{border-bottom:2px solid #444;margin-bottom:1.5em}.better{color:#1b5e20}"
        ".not-better{color:#b00020;background:#fde7e9}</style></head><body>",
        verdict_html(content.verdict or evaluation_verdict(content.adherence), content.title),
    ]
    if content.vbench:
        written["vbench_plot"] = str(
            plot_vbench(content.vbench, out / "plots" / "vbench_dimensions.png", content.vbench_ci)
        )
        dims = sorted({k for s in content.vbench.values() for k in s})
        by_dim = {
            d: {g: format_interval(content.vbench[g] | content.vbench_ci.get(g, {}), d, 4) for g in content.vbench}
            for d in dims
        }
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
            plot_adherence(content.adherence, out / "plots" / "prompt_adherence.png", content.chance)
        )
        groups = list(content.adherence)
        parts += [
            "<h2>Prompt adherence (synthetic vocabulary)</h2>",
            "<p>Background, colour, shape and motion direction recovered from the frames by classical "
            "computer vision (the dominant flat colour per frame, segmentation against it, blob "
            "extent/circularity/polygon vertices, centroid trajectory) and compared with the caption. The "
            "background counts only when it is the caption's in most frames with a steady colour; colour, "
            "shape and direction only when a single subject is found in most frames. Each cell is the mean "
            "with a 95% bootstrap interval over prompts (all seeds of a prompt resampled together); "
            "<em>chance</em> is what a uniform guess scores (1/|vocabulary| per attribute, the mean of those "
            "for adherence, their product for overall). Real clips are the upper bound.</p>",
            "<img src='plots/prompt_adherence.png' alt='prompt adherence'>",
            "<h3>All prompts</h3>",
            _html_table(adherence_rows(content.adherence, content.chance), ["chance", *groups], "metric"),
        ]
        for split, values in content.adherence_splits.items():
            key = split.replace("-", "_")
            prompts = content.splits.get(key, [])
            parts.append(f"<h3>{html.escape(split.capitalize())} combinations</h3>")
            described = {
                "seen": "their colour, shape, background and direction occur together in a "
                "training caption",
                "held-out": "no training caption has their combination",
            }.get(split, "")
            if values:
                parts += [
                    f"<p>{len(prompts)} prompt(s): {html.escape(described)}.</p>",
                    _html_table(adherence_rows(values, content.chance), ["chance", *values], "metric"),
                ]
            else:
                parts.append(f"<p>No {html.escape(split)} prompts were evaluated.</p>")
            if prompts:
                parts.append(
                    "<details><summary>prompts</summary><ul>"
                    + "".join(f"<li>{html.escape(p)}</li>" for p in prompts)
                    + "</ul></details>"
                )
    if content.val_loss is not None and len(content.val_loss):
        written["val_loss_plot"] = str(
            plot_val_loss(content.val_loss, out / "plots" / "val_loss_by_timestep.png")
        )
        value_columns = [c for c in ("loss", "x0_mse") if c in content.val_loss.columns]
        ranges = (
            content.val_loss.groupby(["group", "range_start", "range_end"], sort=True)[value_columns]
            .mean()
            .reset_index()
        )
        rows: dict[str, dict[str, Any]] = {}
        for _, r in ranges.iterrows():
            for column in value_columns:
                name = str(r["group"]) + ("" if column == "loss" else " (x̂0 MSE)")
                rows.setdefault(name, {})[f"[{int(r['range_start'])}, {int(r['range_end'])})"] = float(r[column])
        columns = list(next(iter(rows.values())).keys()) if rows else []
        parts += [
            "<h2>Validation loss by timestep range</h2>",
            "<img src='plots/val_loss_by_timestep.png' alt='validation loss by timestep'>",
            _html_table(rows, columns, "model"),
        ]
    if content.samples:
        parts.append("<h2>Samples</h2><p>The first seed of each prompt; every seed's video is in the "
                     "evaluation output folder.</p>")
        for group in dict.fromkeys(s.group for s in content.samples):
            figures = "".join(
                f"<figure><img src='{html.escape(s.path)}' alt='{html.escape(s.prompt)}'>"
                f"<figcaption>{html.escape(s.prompt)}{f' ({html.escape(s.split)})' if s.split else ''}"
                "</figcaption></figure>"
                for s in content.samples
                if s.group == group
            )
            parts += [f"<h3>{html.escape(group)}</h3>", f"<div class='gifs'>{figures}</div>"]
    if content.notes:
        parts += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in content.notes] + ["</ul>"]
    timing = content.settings.get("timing") or {}
    if timing:
        generated = ", ".join(f"{g} {float(v):.0f} s" for g, v in (timing.get("generate_s") or {}).items())
        score_s = timing.get("score_s")
        parts.append(
            f"<h2>Evaluation cost</h2><p>{int(timing.get('videos', 0))} videos generated ({generated or 'n/a'})"
            + (f"; scoring every clip took {float(score_s):.0f} s" if score_s is not None else "")
            + ".</p>"
        )
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
