"""dvc.yaml: the stage graph, its parameter/dependency declarations, and what `dvc repro` reruns.

The test copies the real dvc.yaml, conf/ and every code dependency into a fresh git + DVC project and
replaces each stage's heavy `kedro run` by a script that writes the stage's declared outputs, so the
graph, the params keys and the deps are the real ones while a repro takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingestion", "curation", "bucketing", "autoencoder", "stage1", "stage2", "stage3", "evaluation"]
TRAINING = ["stage1", "stage2", "stage3"]

MAKE_OUTS = '''
import json, sys, time
from pathlib import Path
import yaml
stages = yaml.safe_load(open("dvc.yaml"))["stages"]
stage = stages[sys.argv[1]]
stamp = str(time.time_ns())  # a rerun produces new content, as retraining would
wanted = [Path(d) for s in stages.values() for d in s["deps"]]  # files later stages read from our folders
for entry in stage.get("outs", []):
    path = Path(entry if isinstance(entry, str) else next(iter(entry)))
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stamp)
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "content.txt").write_text(stamp)
        for dep in wanted:
            if path in dep.parents and dep.suffix:
                dep.parent.mkdir(parents=True, exist_ok=True)
                dep.write_text(stamp)
for entry in stage.get("metrics", []):
    path = Path(entry if isinstance(entry, str) else next(iter(entry)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stamp": stamp}))
'''


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    return done.stdout + done.stderr


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _ran(output: str) -> list[str]:
    return [s for s in STAGES if f"Running stage '{s}'" in output]


def test_dvc_yaml_declares_the_pipeline_chain():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages)[: len(STAGES)] == STAGES
    for name, stage in stages.items():
        assert stage["cmd"] == f"kedro run --pipelines={name}"
        for dep in stage["deps"]:
            if not dep.startswith("data/"):
                assert (ROOT / dep).exists(), f"{name}: dependency {dep} does not exist"
    for name in TRAINING:
        params = stages[name]["params"][0]["conf/base/parameters_training.yml"]
        assert params == ["training_shared", name]
        metrics = [next(iter(m)) for m in stages[name]["metrics"]]
        assert metrics == [f"data/08_reporting/{name}/training_metrics.json",
                           f"data/08_reporting/{name}/validation_metrics.json"]
    assert "data/06_models/stage1.json" in stages["stage2"]["deps"]
    assert "data/06_models/stage2.json" in stages["stage3"]["deps"]


@pytest.fixture
def project(tmp_path):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in stages["stages"].items():
        stage["cmd"] = f"python make_outs.py {name}"
        for dep in stage["deps"]:
            source = ROOT / dep
            if dep.startswith("data/"):
                continue
            if source.is_dir():
                shutil.copytree(source, tmp_path / dep, ignore=shutil.ignore_patterns("__pycache__"),
                                dirs_exist_ok=True)
            else:
                (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, tmp_path / dep)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    shutil.copytree(ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "make_outs.py").write_text(MAKE_OUTS)
    _run(["git", "init", "-q"], tmp_path)
    _dvc("init", "-q", cwd=tmp_path)
    _dvc("config", "core.autostage", "false", cwd=tmp_path)
    _run(["git", "add", "-A"], tmp_path)
    _run(["git", "commit", "-qm", "init"], tmp_path)
    return tmp_path


def _edit_params(project: Path, update) -> None:
    path = project / "conf" / "base" / "parameters_training.yml"
    values = yaml.safe_load(path.read_text())
    update(values)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


@pytest.mark.slow
def test_repro_reruns_only_what_changed(project):
    assert _ran(_dvc("repro", cwd=project)) == STAGES
    second = _dvc("repro", cwd=project)
    assert _ran(second) == [] and json.loads(_dvc("status", "--json", cwd=project)) == {}

    _edit_params(project, lambda v: v["stage3"]["training"].update(lr=1.0e-4))
    assert set(json.loads(_dvc("status", "--json", cwd=project))) == {"stage3"}
    assert _ran(_dvc("repro", cwd=project)) == ["stage3", "evaluation"]

    # a stage-2 change reruns stage 2 and, with its new weights, stage 3 (and nothing upstream)
    _edit_params(project, lambda v: v["stage2"]["training"].update(max_steps=7))
    assert _ran(_dvc("repro", cwd=project)) == ["stage2", "stage3", "evaluation"]

    # a shared training setting touches every training stage, not the data stages
    _edit_params(project, lambda v: v["training_shared"].update(seed=7))
    assert set(json.loads(_dvc("status", "--json", cwd=project))) == set(TRAINING)
    assert _ran(_dvc("repro", "--dry", cwd=project)) == TRAINING  # dry: what would run, nothing runs
    assert set(json.loads(_dvc("status", "--json", cwd=project))) == set(TRAINING)
    assert _ran(_dvc("repro", cwd=project)) == [*TRAINING, "evaluation"]
    assert _ran(_dvc("repro", cwd=project)) == []
