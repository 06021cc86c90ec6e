"""The registry side of the export against a real MLflow SQLite store: description, score and provenance
tags, champion/candidate aliases; and the evaluation node that reads the champion back."""

from __future__ import annotations

import mlflow
import pytest

from opensora_mlops.evaluation.verdict import HEADLINE_SCORE
from opensora_mlops.pipelines.evaluation import nodes as evaluation_nodes
from opensora_mlops.pipelines.export import registry

NAME = "opensora-registry-test"


@pytest.fixture
def client(tmp_path, mlflow_sqlite_store):
    uri = mlflow_sqlite_store(tmp_path / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("registry-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    yield mlflow.MlflowClient(tracking_uri=uri)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri("")


def _new_version(client: mlflow.MlflowClient, tmp_path) -> str:
    """A registered version of NAME (a run's folder as its source: the registry part needs no pyfunc)."""
    experiment = mlflow.get_experiment_by_name("registry-test").experiment_id
    run = client.create_run(experiment)
    try:
        client.get_registered_model(NAME)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(NAME)
    source = tmp_path / "model" / run.info.run_id
    source.mkdir(parents=True)
    return str(client.create_model_version(NAME, source.as_uri(), run_id=run.info.run_id).version)


def _scores(headline: float) -> dict[str, float]:
    return {HEADLINE_SCORE: headline, f"{HEADLINE_SCORE}_low": headline - 0.1,
            f"{HEADLINE_SCORE}_high": headline + 0.1, "adherence.trained.prompts": 6.0,
            "vbench.trained.color": 0.5}


def test_champion_moves_only_to_a_better_version(client, tmp_path):
    assert registry.champion_version(client, NAME) is None  # no such model
    tags = {"stage": "stage3", "steps": "30", "data_version": "dvc:abc"}

    v1 = _new_version(client, tmp_path)
    assert registry.champion_version(client, NAME) is None  # a model without the alias
    first = registry.annotate_and_alias(client, NAME, v1, "# card 1\n", _scores(0.3), tags)
    assert first == {"alias": "champion", "reason": "first registered version: no champion yet",
                     "previous_champion": None}

    v2 = _new_version(client, tmp_path)
    second = registry.annotate_and_alias(client, NAME, v2, "# card 2\n", _scores(0.2), tags)
    assert second["alias"] == "candidate" and second["previous_champion"] == v1
    assert "0.2000 is below the champion's 0.3000" in second["reason"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v1
    assert str(client.get_model_version_by_alias(NAME, "candidate").version) == v2

    v3 = _new_version(client, tmp_path)
    third = registry.annotate_and_alias(client, NAME, v3, "# card 3\n", _scores(0.5), tags)
    assert third["alias"] == "champion" and third["previous_champion"] == v1
    assert "beats the champion's 0.3000" in third["reason"]
    aliases = client.get_registered_model(NAME).aliases
    assert {k: str(v) for k, v in aliases.items()} == {"champion": v3, "candidate": v2}

    version = client.get_model_version(NAME, v3)
    assert version.description == "# card 3\n"
    assert float(version.tags[f"eval.{HEADLINE_SCORE}"]) == 0.5
    assert version.tags["eval.vbench.trained.color"] == "0.5"
    assert version.tags["stage"] == "stage3" and version.tags["data_version"] == "dvc:abc"
    assert version.tags["promotion.alias"] == "champion" and version.tags["promotion.reason"] == third["reason"]
    assert registry.champion_version(client, NAME)[0] == v3


def test_provenance_and_a_long_card():
    manifest = {"source": {"stage": "stage3", "steps": 30, "data_version": None, "run_dir": "x"}}
    assert registry.provenance(manifest, "abc123") == {"stage": "stage3", "steps": "30", "git_commit": "abc123"}
    assert "git_commit" not in registry.provenance(manifest, "unknown")
    card = "x" * 6000
    cut = registry.description(card)
    assert len(cut) == registry.MAX_DESCRIPTION and cut.endswith("model_card/README.md artifact)\n")
    assert registry.description("short") == "short"


def test_evaluation_reads_the_champion_and_the_run(client, tmp_path):
    export_params = {"model_name": "other-name", "registered_model_name": NAME}
    # tracking disabled (no active run): no champion, no run header
    assert evaluation_nodes.champion(export_params) is None
    assert evaluation_nodes.run_info() == {}
    with mlflow.start_run(run_name="kedro run evaluation") as parent:
        mlflow.set_tag("git_commit", "cafe1234")
        assert evaluation_nodes.champion(export_params) is None  # nothing registered yet
        assert evaluation_nodes.champion(None) is None
        version = _new_version(client, tmp_path)
        registry.annotate_and_alias(client, NAME, version, "card", _scores(0.4), {"stage": "stage3"})
        with mlflow.start_run(run_name="evaluation", nested=True) as nested:
            found = evaluation_nodes.champion(export_params)
            info = evaluation_nodes.run_info()
    assert found["name"] == NAME and found["version"] == version
    assert found["scores"][HEADLINE_SCORE] == 0.4 and found["scores"]["vbench.trained.color"] == 0.5
    assert info["run_id"] == nested.info.run_id != parent.info.run_id
    assert info["git_commit"] == "cafe1234"  # the parent's tag
    assert info["url"].endswith(f"/#/experiments/{nested.info.experiment_id}/runs/{nested.info.run_id}")
    assert info["tracking_uri"].startswith("sqlite:///")
