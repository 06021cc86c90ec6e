"""Shared pytest setup: offline, quiet, deterministic."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

for _key, _value in {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def mlflow_sqlite_store(tmp_path_factory):
    """``make(target) -> tracking URI``: a fresh MLflow SQLite store at ``target``, copied from one migrated
    per test session (creating the tables runs MLflow's migrations, which takes seconds each time)."""

    def make(target: Path) -> str:
        import mlflow

        template = tmp_path_factory.getbasetemp() / "mlflow_template.db"
        if not template.exists():
            mlflow.MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"

    return make
