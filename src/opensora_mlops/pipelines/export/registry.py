"""The MLflow model registry side of the export: what a registered version carries, and its alias.

A version gets the model card as its description, its evaluation scores as tags ``eval.<metric>``
(``eval.adherence.trained.adherence`` …), and ``stage``, ``steps``, ``data_version``, ``git_commit`` and
``source_run_id``. Aliases: ``champion`` moves to the new version only when
:func:`opensora_mlops.evaluation.verdict.promotion_decision` says it beats the current champion's headline
score (read from the champion's tags); otherwise the new version is the ``candidate``. The decision and
its reason are tags too (``promotion.alias``, ``promotion.reason``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from opensora_mlops.evaluation.verdict import CHAMPION, promotion_decision, score_tags, scores_from_tags

#: The registry stores a version's description in a 5000-character column.
MAX_DESCRIPTION = 5000
SOURCE_KEYS = ("stage", "steps", "data_version")


def provenance(manifest: Mapping[str, Any], git_commit: str | None = None) -> dict[str, str]:
    """``stage``, ``steps``, ``data_version`` from the export's source (those recorded) and ``git_commit``
    (when known), as strings."""
    source = manifest.get("source") or {}
    values = {key: str(source[key]) for key in SOURCE_KEYS if source.get(key) is not None}
    if git_commit and git_commit != "unknown":
        values["git_commit"] = git_commit
    return values


def description(card: str, limit: int = MAX_DESCRIPTION) -> str:
    """The model card, cut to ``limit`` characters with a pointer to the full card when longer."""
    if len(card) <= limit:
        return card
    tail = "\n\n… (cut; the full card is the run's model_card/README.md artifact)\n"
    return card[: limit - len(tail)] + tail


def git_commit_of_run(client: mlflow.MlflowClient, run_id: str) -> str | None:
    """The ``git_commit`` tag the project's hooks put on the ``kedro run`` parent run (this run's or its
    parent's), or None."""
    tags = client.get_run(run_id).data.tags
    if tags.get("git_commit"):
        return tags["git_commit"]
    parent = tags.get("mlflow.parentRunId")
    return client.get_run(parent).data.tags.get("git_commit") if parent else None


def champion_version(client: mlflow.MlflowClient, name: str) -> tuple[str, dict[str, str]] | None:
    """(version, tags) of ``name``'s ``champion``, or None when the model or the alias does not exist."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (model.aliases or {}).get(CHAMPION)
    if version is None:
        return None
    return str(version), dict(client.get_model_version(name, str(version)).tags)


def annotate_and_alias(
    client: mlflow.MlflowClient,
    name: str,
    version: str,
    card: str,
    scores: Mapping[str, float],
    tags: Mapping[str, str],
) -> dict[str, Any]:
    """Describe and tag a registered version, then give it ``champion`` or ``candidate``.

    Returns ``{"alias", "reason", "previous_champion"}`` (the version that held ``champion`` before,
    None for the first)."""
    current = champion_version(client, name)
    client.update_model_version(name, version, description=description(card))
    for key, value in {**score_tags(scores), **tags}.items():
        client.set_model_version_tag(name, version, key, value)
    promotion = promotion_decision(scores, scores_from_tags(current[1]) if current else None)
    client.set_registered_model_alias(name, promotion.alias, version)
    client.set_model_version_tag(name, version, "promotion.alias", promotion.alias)
    client.set_model_version_tag(name, version, "promotion.reason", promotion.reason)
    return {"alias": promotion.alias, "reason": promotion.reason,
            "previous_champion": current[0] if current else None}


__all__ = ["annotate_and_alias", "champion_version", "description", "git_commit_of_run", "provenance"]
