"""``make demo``: the whole default Kedro pipeline on the embedded synthetic corpus, then a summary.

Orchestration only (it lives beside the pipelines because it drives Kedro): runs ``__default__``
(ingestion → curation → bucketing → autoencoder → stage1–3 → evaluation → export) in one Kedro session,
so every stage lands as a nested MLflow run under one parent run, and prints where things are.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _peak_rss_gib() -> float:
    # ru_maxrss is KiB on Linux; children covers torchrun/ffmpeg subprocesses if any were used
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _table_lines(rows: dict[str, dict[str, str]], columns: list[str], indent: str = "    ") -> list[str]:
    widths = [max(len(name) for name in rows)] + [
        max(len(c), *(len(r.get(c, "")) for r in rows.values())) for c in columns
    ]
    header = indent + "  ".join(text.ljust(w) for text, w in zip(["", *columns], widths))
    lines = [header.rstrip()]
    for name, values in rows.items():
        cells = [name, *(values.get(c, "") for c in columns)]
        lines.append((indent + "  ".join(text.ljust(w) for text, w in zip(cells, widths))).rstrip())
    return lines


def _adherence_lines(metrics: dict[str, Any]) -> list[str]:
    """Per-attribute means with 95% intervals and chance, for all, seen and held-out prompts."""
    from opensora_mlops.evaluation.prompt_adherence import CHANCE
    from opensora_mlops.evaluation.report import adherence_rows

    chance = metrics.get("chance") or CHANCE
    lines = []
    for key, title in (("adherence", "all prompts"), ("adherence_seen", "seen combinations (in a training "
                       "caption)"), ("adherence_held_out", "held-out combinations (in no training caption)")):
        groups = metrics.get(key) or {}
        ordered = {g: groups[g] for g in ("real", "trained", "untrained") if isinstance(groups.get(g), dict)}
        if not ordered:
            continue
        lines.append(f"   {title}")
        lines += _table_lines(adherence_rows(ordered, chance), ["chance", *ordered])
    return lines


def summarise(project: Path, seconds: float, peak_gib: float, seed: int | None = None) -> str:
    """A human summary of a finished default run: report, samples, model, MLflow, scores."""
    data = project / "data"
    metrics = _read_json(data / "08_reporting/evaluation/metrics.json")
    samples = sorted((data / "07_model_output/evaluation").glob("**/*.mp4"))[:6]
    registration = _read_json(data / "08_reporting/export/registration.json")
    lines = [
        "",
        f"opensora-mlops demo finished in {seconds / 60:.1f} min (peak memory {peak_gib:.2f} GiB)"
        + (f", training seed {seed}" if seed is not None else ""),
        f"  report          {data / '08_reporting/evaluation/index.html'}",
        f"  exported model  {data / '06_models/export'}",
    ]
    if registration.get("model_uri"):
        lines.append(f"  MLflow model    {registration['model_uri']}")
        if registration.get("alias"):
            lines.append(f"                  alias {registration['alias']}: {registration.get('reason', '')}")
    lines.append("  sample videos")
    lines += [f"    {path}" for path in samples] or ["    (none)"]
    adherence = _adherence_lines(metrics)
    if adherence:
        lines.append("  prompt adherence: share of clips right, mean [95% bootstrap interval over prompts]; "
                     "chance = a uniform guess")
        lines += adherence
    lines += [
        "  compare runs:   .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db",
        "                  then open http://127.0.0.1:5000",
        "  generate:       .venv/bin/python -m opensora_mlops generate --model-dir data/06_models/export "
        '--prompt "A red circle moving left quickly on a gray background."',
    ]
    return "\n".join(lines)


def record_dvc_lock(project: Path) -> bool:
    """Record the finished run in ``dvc.lock`` (``dvc commit``), so that ``dvc repro`` finds every stage
    up to date instead of redoing the run. Skipped outside a DVC repository; a failure is a warning
    (the run's results are all there), naming the command to run by hand."""
    log = logging.getLogger(__name__)
    if not (project / "dvc.yaml").is_file() or not (project / ".dvc").is_dir():
        log.info("not a DVC repository (%s): dvc.lock not written", project)
        return False
    command = [sys.executable, "-m", "dvc", "commit", "--force", "--quiet"]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        log.warning("dvc commit failed, so `dvc repro` would run everything again; fix the cause and run "
                    "`dvc commit --force`:\n%s", (done.stderr or done.stdout).strip()[-2000:])
        return False
    log.info("recorded the run in dvc.lock: `dvc repro --dry` has nothing to do")
    return True


def run_demo(project_path: str | os.PathLike = ".", env: str | None = None, seed: int | None = None) -> str:
    """Run the default pipeline in ``project_path`` and return the printed summary. ``seed`` overrides
    ``training_shared.seed`` (as ``kedro run --params training_shared.seed=N`` would)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project = Path(project_path).resolve()
    if not (project / "pyproject.toml").is_file():
        raise FileNotFoundError(f"not a Kedro project (no pyproject.toml): {project}")
    for key, value in {"KEDRO_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}.items():
        os.environ.setdefault(key, value)
    bootstrap_project(project)
    started = time.perf_counter()
    runtime_params = {"training_shared": {"seed": int(seed)}} if seed is not None else None
    with KedroSession.create(project_path=project, env=env, runtime_params=runtime_params) as session:
        session.run(pipeline_names=["__default__"])
    record_dvc_lock(project)
    return summarise(project, time.perf_counter() - started, _peak_rss_gib(), seed=seed)
