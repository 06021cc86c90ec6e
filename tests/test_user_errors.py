"""Expected errors (bad settings or input, explained by their message) end `kedro run` and the CLI with
that message, not a traceback through Kedro's runner; a bug keeps its traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.errors import TRACEBACK_ENV, expected_error
from opensora_mlops.hooks import ShortErrorHooks
from opensora_mlops.inference.sampling import GenerationError

REPO = Path(__file__).resolve().parents[1]
KEDRO = Path(sys.executable).with_name("kedro")


@pytest.fixture
def uncaptioned_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(REPO / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    (project / "src").mkdir()  # Kedro wants a source folder; the package itself is the installed one
    footage = tmp_path / "footage"
    footage.mkdir()
    (footage / "a.mp4").write_bytes(b"\x00" * 64)  # never probed: the caption check comes first
    return project, footage


def _kedro_run(project: Path, footage: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "OPENSORA_MLFLOW": "0", "COLUMNS": "100",
                   **env}
    environment.pop(TRACEBACK_ENV, None) if TRACEBACK_ENV not in env else None
    return subprocess.run([str(KEDRO), "run", "--pipelines=ingestion", "--params",
                           f"ingestion.source=folder,ingestion.folder.root={footage}"],
                          cwd=project, env=environment, capture_output=True, text=True, timeout=300)


def test_an_input_problem_ends_kedro_run_with_its_message(uncaptioned_project):
    done = _kedro_run(*uncaptioned_project)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "kedro run: error: CaptionSourceError in node 'collect_candidates':" in done.stderr
    assert "ingestion.folder.captions_csv" in done.stderr  # the fix is in the message
    assert "Traceback" not in output and "❱" not in output  # neither Python's nor rich's traceback
    assert len(output.splitlines()) < 150


def test_the_traceback_comes_back_on_request(uncaptioned_project):
    done = _kedro_run(*uncaptioned_project, **{TRACEBACK_ENV: "1"})
    assert done.returncode == 1
    assert "kedro run: error:" not in done.stderr
    assert "raise CaptionSourceError" in done.stdout + done.stderr


def test_the_error_is_found_through_a_wrapping_exception():
    try:
        try:
            raise GenerationError("--num-frames 100000 is over the limit")
        except GenerationError as inner:
            raise RuntimeError("node failed") from inner
    except RuntimeError as outer:
        assert isinstance(expected_error(outer), GenerationError)
    assert expected_error(RuntimeError("a bug")) is None
    assert expected_error(KeyError("x")) is None


def test_only_the_failed_runs_error_is_shortened(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: seen.append(args[1]))
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    hooks = ShortErrorHooks()
    error = ConfigError("stage1.training: unknown key 'max_step' (did you mean 'max_steps'?)")

    class Node:
        name = "stage1.train_stage"

    hooks.on_node_error(error, Node(), None, {}, False, "run")
    hooks.on_pipeline_error(error, {}, None, None)
    sys.excepthook(ConfigError, error, None)
    assert "ConfigError in node 'stage1.train_stage':\nstage1.training: unknown key 'max_step'" in capsys.readouterr().err
    bug = RuntimeError("a bug")
    sys.excepthook(RuntimeError, bug, None)
    assert seen == [bug]  # anything else goes to the previous hook (Kedro's rich traceback)

    # a bug ending the run leaves the excepthook alone
    monkeypatch.setattr(sys, "excepthook", previous := (lambda *args: None))
    hooks.on_pipeline_error(bug, {}, None, None)
    assert sys.excepthook is previous


def test_the_cli_prints_an_expected_error_in_one_line(tmp_path, capsys):
    from opensora_mlops.__main__ import main

    code = main(["generate", "--model-dir", str(tmp_path), "--prompt", "a red circle", "--num-frames", "100000"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("opensora-mlops generate: error:") and "Traceback" not in err
