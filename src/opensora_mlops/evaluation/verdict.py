"""The verdict of an evaluation: is the trained model better than the untrained baseline and than the
registered champion, and does a newly registered version replace the champion.

The headline score is the trained model's **adherence** (the mean of the four attribute checks,
"adherence (mean of 4)" in the report; flattened ``adherence.trained.adherence``). ``overall`` (all
four right) is shown too, but it stays at 0 for every small model long after the single attributes
improve, so it cannot rank them.

A difference trained − baseline is *better* only when its 95% interval lies above 0 (an interval that
includes 0 or lies below it is "NOT BETTER"), and only with at least two prompts behind it (one prompt's
interval has no width: the data say nothing about the spread). Two intervals are available:

* **paired bootstrap over prompts** (trained − untrained): both models generate the same prompts (the
  untrained one with the first of the trained model's seeds, ``untrained_samples_per_prompt``), so each
  prompt gives one difference, the trained mean minus the untrained mean over its samples, and
  :func:`~opensora_mlops.evaluation.statistics.cluster_bootstrap` resamples those per-prompt differences.
  Pairing removes the prompt-to-prompt spread that both models share;
* **from the two intervals** (trained − champion, whose per-prompt scores are not kept; and a fallback
  without the per-prompt table): each bootstrap interval gives a standard error (its half width over
  z), the difference gets z·√(se₁² + se₂²), treating the two evaluations as independent.

The champion's scores travel as model-version tags ``eval.<flattened metric>``
(:func:`score_tags` / :func:`scores_from_tags`); :func:`promotion_decision` compares the headline.
No MLflow here: the nodes read and write the registry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.evaluation.prompt_adherence import SUMMARY_COLUMNS
from opensora_mlops.evaluation.statistics import cluster_bootstrap

HEADLINE_METRIC = "adherence"
HEADLINE_GROUP = "trained"
#: The headline score's flattened name (export scores, registry tags without the prefix).
HEADLINE_SCORE = f"adherence.{HEADLINE_GROUP}.{HEADLINE_METRIC}"
#: Metrics the verdict compares: the four caption attributes, their mean and all-four-right.
VERDICT_METRICS: tuple[str, ...] = ("colour", "shape", "direction", "background", "adherence", "overall")
SCORE_TAG_PREFIX = "eval."
CHAMPION, CANDIDATE = "champion", "candidate"
PAIRED, FROM_INTERVALS = "paired bootstrap over prompts", "from the two intervals"


# ------------------------------------------------------------------------------ registry tags
def score_tags(scores: Mapping[str, float]) -> dict[str, str]:
    """``{"eval.<name>": "<value>"}`` for every finite score (full precision, so tags round-trip)."""
    return {
        f"{SCORE_TAG_PREFIX}{name}": repr(float(value))
        for name, value in scores.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def scores_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The scores among model-version tags (``eval.<name>``; values that are not numbers are skipped)."""
    scores: dict[str, float] = {}
    for key, value in tags.items():
        if not key.startswith(SCORE_TAG_PREFIX):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            scores[key[len(SCORE_TAG_PREFIX):]] = number
    return scores


def group_scores(scores: Mapping[str, float], group: str = HEADLINE_GROUP, block: str = "adherence") -> dict[str, float]:
    """``{metric: value}`` of one group from flattened scores (``adherence.trained.colour_low`` → ``colour_low``)."""
    prefix = f"{block}.{group}."
    return {k[len(prefix):]: float(v) for k, v in scores.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------ promotion
@dataclass(frozen=True)
class Promotion:
    alias: str  # CHAMPION or CANDIDATE
    reason: str


def _headline(scores: Mapping[str, float] | None, headline: str) -> float | None:
    value = (scores or {}).get(headline)
    return float(value) if value is not None and math.isfinite(float(value)) else None


def promotion_decision(
    new_scores: Mapping[str, float],
    champion_scores: Mapping[str, float] | None,
    headline: str = HEADLINE_SCORE,
) -> Promotion:
    """Whether a newly registered version becomes ``champion`` or stays ``candidate``.

    No champion yet (None): the new version is the champion. Otherwise it must beat the champion's
    ``headline`` score strictly (a tie keeps the champion); a new version without the score cannot, and
    a champion without it is replaced by one that has it.
    """
    new = _headline(new_scores, headline)
    if champion_scores is None:
        return Promotion(CHAMPION, "first registered version: no champion yet")
    old = _headline(champion_scores, headline)
    if new is None:
        return Promotion(CANDIDATE, f"no {headline} score: cannot be compared with the champion")
    if old is None:
        return Promotion(CHAMPION, f"{headline} {new:.4f}; the champion has no {headline} score")
    if new > old:
        return Promotion(CHAMPION, f"{headline} {new:.4f} beats the champion's {old:.4f}")
    relation = "ties" if new == old else "is below"
    return Promotion(CANDIDATE, f"{headline} {new:.4f} {relation} the champion's {old:.4f}")


# ------------------------------------------------------------------------------ differences
@dataclass(frozen=True)
class Difference:
    """trained − baseline of one metric with its interval; ``prompts``: how many prompts it rests on."""

    metric: str
    estimate: float
    low: float
    high: float
    method: str
    prompts: int

    @property
    def better(self) -> bool:
        return self.prompts >= 2 and math.isfinite(self.low) and self.low > 0.0


def paired_differences(
    table: pd.DataFrame,
    group: str,
    baseline: str,
    metrics: Sequence[str] = VERDICT_METRICS,
    cluster: str = "caption",
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Difference]:
    """``group`` − ``baseline`` per metric from the per-clip adherence table: per prompt (``cluster``)
    the difference of the two groups' means, bootstrapped over the prompts both groups scored.
    Empty when either group has no rows."""
    a = table[table["group"] == group]
    b = table[table["group"] == baseline]
    if not len(a) or not len(b):
        return {}
    out: dict[str, Difference] = {}
    for metric in metrics:
        column = SUMMARY_COLUMNS.get(metric, metric)
        per_prompt = pd.concat(
            [a.groupby(cluster)[column].mean().rename("a"), b.groupby(cluster)[column].mean().rename("b")],
            axis=1,
            join="inner",
        ).dropna()
        diffs = (per_prompt["a"] - per_prompt["b"]).to_numpy(dtype=np.float64)
        interval = cluster_bootstrap(diffs, None, confidence, num_resamples, seed)
        out[metric] = Difference(metric, interval.mean, interval.low, interval.high, PAIRED, len(diffs))
    return out


def interval_differences(
    scores: Mapping[str, float],
    baseline: Mapping[str, float],
    metrics: Sequence[str] = VERDICT_METRICS,
) -> dict[str, Difference]:
    """``scores`` − ``baseline`` per metric from their means and intervals (``<metric>_low``/``_high``),
    the two treated as independent and of the same confidence: a half width is z·se, so the difference's
    is √(half₁² + half₂²). A metric missing on either side is left out; ``prompts`` is the smaller of
    the two ``prompts`` counts (2 when neither records it)."""
    prompts = int(min(scores.get("prompts", 2.0), baseline.get("prompts", 2.0)))
    out: dict[str, Difference] = {}
    for metric in metrics:
        if metric not in scores or metric not in baseline:
            continue
        mean_a, mean_b = float(scores[metric]), float(baseline[metric])
        half_a = (float(scores.get(f"{metric}_high", mean_a)) - float(scores.get(f"{metric}_low", mean_a))) / 2.0
        half_b = (float(baseline.get(f"{metric}_high", mean_b)) - float(baseline.get(f"{metric}_low", mean_b))) / 2.0
        half = math.sqrt(half_a**2 + half_b**2)
        estimate = mean_a - mean_b
        out[metric] = Difference(metric, estimate, estimate - half, estimate + half, FROM_INTERVALS, prompts)
    return out


# ------------------------------------------------------------------------------ the verdict
@dataclass(frozen=True)
class Comparison:
    """The trained model against one baseline (``name``: "untrained" or "champion")."""

    name: str
    label: str  # what the report calls the baseline ("untrained model", "champion opensora v3")
    differences: dict[str, Difference] = field(default_factory=dict)
    note: str = ""  # why there is nothing to compare ("no champion yet")

    @property
    def available(self) -> bool:
        return bool(self.differences)

    @property
    def better(self) -> bool:
        headline = self.differences.get(HEADLINE_METRIC)
        return headline is not None and headline.better


@dataclass(frozen=True)
class Verdict:
    trained: dict[str, float]
    untrained: dict[str, float]
    champion: dict[str, float]
    comparisons: tuple[Comparison, ...]
    champion_label: str | None = None
    run: dict[str, str] = field(default_factory=dict)
    confidence: float = 0.95


def evaluation_verdict(
    adherence: Mapping[str, Mapping[str, float]],
    table: pd.DataFrame | None = None,
    champion: Mapping[str, Any] | None = None,
    run: Mapping[str, str] | None = None,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> Verdict:
    """Trained vs untrained and vs the champion.

    ``adherence``: {group: {metric, metric_low, metric_high, prompts}} (the evaluation summary);
    ``table``: the per-clip adherence table (columns group, caption and the metric columns) for the
    paired trained − untrained interval, None: from the two intervals; ``champion``: ``{"name", "version",
    "scores"}`` with the champion's flattened scores (registry tags), None: no champion yet; ``run``:
    plain strings shown in the header (``run_id``, ``git_commit``, ``url``, ``tracking_uri``).
    """
    trained = dict(adherence.get("trained") or {})
    untrained = dict(adherence.get("untrained") or {})
    comparisons = []
    if not trained:
        note = "the trained model was not evaluated on synthetic-vocabulary prompts"
        comparisons = [Comparison("untrained", "untrained model", note=note),
                       Comparison("champion", "champion", note=note)]
        return Verdict(trained, untrained, {}, tuple(comparisons), run=dict(run or {}), confidence=confidence)
    if untrained:
        differences = {}
        if table is not None and len(table) and {"group", "caption"} <= set(table.columns):
            differences = paired_differences(table, "trained", "untrained", confidence=confidence,
                                             num_resamples=num_resamples, seed=seed)
        if not differences:
            differences = interval_differences(trained, untrained)
        comparisons.append(Comparison("untrained", "untrained model", differences))
    else:
        comparisons.append(Comparison("untrained", "untrained model", note="the untrained model was not evaluated"))
    champion_scores: dict[str, float] = {}
    label = None
    if champion is None:
        comparisons.append(Comparison("champion", "champion", note="no champion yet"))
    else:
        label = f"champion {champion.get('name', '?')} v{champion.get('version', '?')}"
        champion_scores = group_scores(champion.get("scores") or {})
        differences = interval_differences(trained, champion_scores)
        note = "" if differences else "the champion has no adherence scores recorded"
        comparisons.append(Comparison("champion", label, differences, note))
    return Verdict(trained, untrained, champion_scores, tuple(comparisons), label, dict(run or {}), confidence)


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where the MLflow UI shows a run: on the tracking server itself for an http(s) URI, else on a local
    ``mlflow ui`` (``ui``) started over the same store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ui.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "HEADLINE_METRIC",
    "HEADLINE_SCORE",
    "VERDICT_METRICS",
    "Comparison",
    "Difference",
    "Promotion",
    "Verdict",
    "evaluation_verdict",
    "group_scores",
    "interval_differences",
    "mlflow_run_url",
    "paired_differences",
    "promotion_decision",
    "score_tags",
    "scores_from_tags",
]
