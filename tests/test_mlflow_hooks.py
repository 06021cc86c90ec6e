"""MLflow hook helpers: URI resolution with fallback, parameter flattening, git/data tags."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from opensora_mlops.hooks import (
    data_version,
    flatten_params,
    git_commit,
    resolve_tracking_uri,
    server_reachable,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_warns_and_falls_back_to_the_local_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    down = f"http://127.0.0.1:{_closed_port()}"
    assert not server_reachable(down, timeout=0.5)
    with pytest.warns(RuntimeWarning, match=f"{down} is not reachable"):
        uri, fell_back = resolve_tracking_uri(down, tmp_path, "sqlite:///mlruns/mlflow.db")
    assert fell_back and uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert (tmp_path / "mlruns").is_dir()


def test_environment_overrides_the_config_and_local_stores_need_no_server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    uri, fell_back = resolve_tracking_uri("http://example.invalid:5000", tmp_path)
    assert uri == f"sqlite:///{tmp_path}/env.db" and not fell_back
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri, fell_back = resolve_tracking_uri("sqlite:///mlruns/x.db", tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'x.db'}" and not fell_back


def test_flatten_params_nests_with_dots_and_clips_long_values():
    flat = flatten_params({"training_shared": {"model": {"name": "STDiT2-tiny"}, "lr": 1e-3, "empty": {}},
                           "seed": 42, "long": "x" * 7000})
    assert flat["training_shared.model.name"] == "STDiT2-tiny"
    assert flat["training_shared.lr"] == "0.001" and flat["seed"] == "42"
    assert flat["training_shared.empty"] == "{}"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("...")


def test_git_and_data_version_tags(tmp_path):
    root = Path(__file__).resolve().parents[1]
    sha, _dirty = git_commit(root)
    assert len(sha) == 40 and int(sha, 16) >= 0
    assert git_commit(tmp_path) == ("unknown", False)
    assert data_version(tmp_path) == "unversioned"
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    first = data_version(tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert first.startswith("dvc:") and data_version(tmp_path) != first
