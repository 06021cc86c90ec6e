"""Prefect flows that run the project's Kedro pipelines.

Each Kedro pipeline is one Prefect task run (named ``kedro-<pipeline>``) with retries and its log
forwarded to Prefect. Tasks run in order and a failure stops the flow: stage 2 never starts from a
stage 1 that failed. A task runs Kedro either

* ``runner="subprocess"`` (default, production): ``python -m kedro run --pipelines=<name> [--env …]
  [--params …]`` in the project directory, an argument list (no shell), so each pipeline gets a fresh
  interpreter (GPU memory released between stages; torchrun/colossalai launchers work the same way), or
* ``runner="in_process"``: a :class:`kedro.framework.session.KedroSession` in the worker's process
  (no interpreter start-up; useful for quick local runs).

The flows:

* :func:`curation_flow` — nightly: ingest new footage, curate it, rebuild the bucket tables;
* :func:`training_flow` — weekly: fine-tune through the three stages, evaluate, export;
* :func:`kedro_flow` — any list of pipelines, for ad-hoc runs from the Prefect UI.

Deployments with schedules on a process work pool live in :mod:`pipelines.deployments`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

#: The project root (this file is <root>/pipelines/flows.py).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

CURATION_PIPELINES: tuple[str, ...] = ("ingestion", "curation", "bucketing")
TRAINING_PIPELINES: tuple[str, ...] = ("stage1", "stage2", "stage3", "evaluation", "export")
RUNNERS = ("subprocess", "in_process")

#: Offline and quiet: no telemetry or hub downloads from scheduled runs.
QUIET_ENV = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}


def _format_params(params: Mapping[str, Any]) -> str:
    """Kedro's ``--params`` syntax: ``a.b=1,c=x`` (values must not contain commas)."""
    parts = []
    for key, value in params.items():
        text = str(value)
        if "," in text:
            raise ValueError(
                f"--params value for {key!r} contains a comma, which Kedro's CLI splits on: {text!r}"
            )
        parts.append(f"{key}={text}")
    return ",".join(parts)


def kedro_command(
    pipeline: str, env: str | None = None, params: Mapping[str, Any] | None = None
) -> list[str]:
    """The ``kedro run`` argument list for one pipeline."""
    command = [sys.executable, "-m", "kedro", "run", f"--pipelines={pipeline}"]
    if env:
        command.append(f"--env={env}")
    if params:
        command.append(f"--params={_format_params(params)}")
    return command


def _run_subprocess(
    pipeline: str, project_dir: Path, env: str | None, params: Mapping[str, Any] | None
) -> None:
    logger = get_run_logger()
    command = kedro_command(pipeline, env, params)
    logger.info("running %s in %s", " ".join(command[1:]), project_dir)
    process_env = dict(os.environ) | QUIET_ENV
    tail: list[str] = []
    with subprocess.Popen(
        command, cwd=project_dir, env=process_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                logger.info("[kedro %s] %s", pipeline, line)
                tail = (tail + [line])[-40:]
        returncode = process.wait()
    if returncode != 0:
        raise RuntimeError(
            f"kedro pipeline {pipeline!r} failed with exit code {returncode}; last output:\n"
            + "\n".join(tail)
        )


def _run_in_process(
    pipeline: str, project_dir: Path, env: str | None, params: Mapping[str, Any] | None
) -> None:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    logger = get_run_logger()
    logger.info("running kedro pipeline %r in-process in %s", pipeline, project_dir)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    bootstrap_project(project_dir)
    with KedroSession.create(project_path=project_dir, env=env, runtime_params=dict(params or {})) as session:
        session.run(pipeline_names=[pipeline])


@task(retries=2, retry_delay_seconds=60, task_run_name="kedro-{pipeline}", log_prints=True)
def run_kedro_pipeline(
    pipeline: str,
    project_dir: str,
    env: str | None = None,
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
) -> dict[str, Any]:
    """Run one Kedro pipeline; returns ``{"pipeline", "seconds", "runner"}``. Raises on failure (retried)."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    root = Path(project_dir).resolve()
    if not (root / "pyproject.toml").is_file() or not (root / "conf").is_dir():
        raise FileNotFoundError(f"{root} is not a Kedro project directory (no pyproject.toml / conf/)")
    start = time.monotonic()
    if runner == "subprocess":
        _run_subprocess(pipeline, root, env, params)
    else:
        _run_in_process(pipeline, root, env, params)
    seconds = time.monotonic() - start
    get_run_logger().info("kedro pipeline %r finished in %.1f s", pipeline, seconds)
    return {"pipeline": pipeline, "seconds": seconds, "runner": runner}


def _run_sequence(
    pipelines: Sequence[str],
    project_dir: str | None,
    env: str | None,
    params: dict[str, Any] | None,
    runner: str,
    retries: int | None,
    retry_delay_seconds: float | None,
) -> list[dict[str, Any]]:
    if not pipelines:
        raise ValueError("no pipelines to run")
    options: dict[str, Any] = {}
    if retries is not None:
        options["retries"] = retries
    if retry_delay_seconds is not None:
        options["retry_delay_seconds"] = retry_delay_seconds
    step = run_kedro_pipeline.with_options(**options) if options else run_kedro_pipeline
    directory = str(Path(project_dir).resolve()) if project_dir else str(PROJECT_ROOT)
    # in order, each waiting for the previous: a failure raises here and stops the flow
    return [step(name, directory, env, params, runner) for name in pipelines]


@flow(name="kedro-pipelines", log_prints=True)
def kedro_flow(
    pipelines: list[str],
    project_dir: str | None = None,
    env: str | None = None,
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Run the given Kedro pipelines in order, one task each."""
    return _run_sequence(pipelines, project_dir, env, params, runner, retries, retry_delay_seconds)


@flow(name="nightly-curation", log_prints=True)
def curation_flow(
    project_dir: str | None = None,
    env: str | None = None,
    pipelines: list[str] = list(CURATION_PIPELINES),  # noqa: B006 (Prefect parameters are copied per run)
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Ingest and curate new footage and rebuild the training buckets."""
    return _run_sequence(pipelines, project_dir, env, params, runner, retries, retry_delay_seconds)


@flow(name="weekly-fine-tune", log_prints=True)
def training_flow(
    project_dir: str | None = None,
    env: str | None = None,
    pipelines: list[str] = list(TRAINING_PIPELINES),  # noqa: B006
    params: dict[str, Any] | None = None,
    runner: str = "subprocess",
    retries: int | None = None,
    retry_delay_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Fine-tune through the three training stages, then evaluate and export the model."""
    return _run_sequence(pipelines, project_dir, env, params, runner, retries, retry_delay_seconds)


if __name__ == "__main__":
    # ad-hoc: python pipelines/flows.py ingestion curation  (runs in Prefect's ephemeral mode)
    kedro_flow(pipelines=sys.argv[1:] or list(CURATION_PIPELINES))
