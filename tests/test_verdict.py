"""The evaluation verdict (trained vs untrained vs champion), the champion/candidate decision, and the
report's opening verdict section, on constructed scores."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.evaluation.evaluate import flatten_metrics
from opensora_mlops.evaluation.prompt_adherence import SUMMARY_COLUMNS, summarise_with_intervals
from opensora_mlops.evaluation.report import ReportContent, write_report
from opensora_mlops.evaluation.verdict import (
    CANDIDATE,
    CHAMPION,
    FROM_INTERVALS,
    HEADLINE_SCORE,
    PAIRED,
    evaluation_verdict,
    interval_differences,
    mlflow_run_url,
    paired_differences,
    promotion_decision,
    score_tags,
    scores_from_tags,
)

PROMPTS = [f"a red circle moving left quickly on a gray background {i}" for i in range(6)]


def _table(levels: dict[str, list[float]], seeds: int = 3) -> pd.DataFrame:
    """Per-clip adherence rows: every metric column of a group's clip for prompt p is levels[group][p]."""
    rows = []
    for group, per_prompt in levels.items():
        for prompt, value in zip(PROMPTS, per_prompt, strict=True):
            for _ in range(seeds):
                rows.append({"group": group, "caption": prompt} | {c: value for c in SUMMARY_COLUMNS.values()})
    return pd.DataFrame(rows)


def _summary(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    return summarise_with_intervals(table, num_resamples=500)


# ------------------------------------------------------------------------------ promotion
def test_first_version_is_champion_and_only_a_higher_headline_replaces_it():
    first = promotion_decision({HEADLINE_SCORE: 0.3}, None)
    assert first.alias == CHAMPION and "no champion yet" in first.reason
    better = promotion_decision({HEADLINE_SCORE: 0.5}, {HEADLINE_SCORE: 0.4})
    assert better.alias == CHAMPION and "0.5000 beats the champion's 0.4000" in better.reason
    worse = promotion_decision({HEADLINE_SCORE: 0.3}, {HEADLINE_SCORE: 0.4})
    assert worse.alias == CANDIDATE and "is below" in worse.reason
    tie = promotion_decision({HEADLINE_SCORE: 0.4}, {HEADLINE_SCORE: 0.4})
    assert tie.alias == CANDIDATE and "ties" in tie.reason
    # other scores do not count: a better overall with a worse headline stays candidate
    assert promotion_decision({HEADLINE_SCORE: 0.3, "adherence.trained.overall": 1.0},
                              {HEADLINE_SCORE: 0.4, "adherence.trained.overall": 0.0}).alias == CANDIDATE
    # missing or non-finite headline scores
    assert promotion_decision({}, {HEADLINE_SCORE: 0.4}).alias == CANDIDATE
    assert promotion_decision({HEADLINE_SCORE: float("nan")}, {HEADLINE_SCORE: 0.4}).alias == CANDIDATE
    assert promotion_decision({HEADLINE_SCORE: 0.1}, {"vbench.trained.color": 0.9}).alias == CHAMPION


def test_score_tags_round_trip_at_full_precision():
    scores = {HEADLINE_SCORE: 1 / 3, "adherence.trained.n": 12.0, "bad": float("nan")}
    tags = score_tags(scores)
    assert set(tags) == {f"eval.{HEADLINE_SCORE}", "eval.adherence.trained.n"}
    back = scores_from_tags(tags | {"stage": "stage3", "eval.note": "not a number"})
    assert back == {HEADLINE_SCORE: 1 / 3, "adherence.trained.n": 12.0}


# ------------------------------------------------------------------------------ differences
def test_paired_bootstrap_sees_a_consistent_gain_that_the_two_intervals_hide():
    # prompts differ a lot in difficulty, the trained model is 0.1 better on every one of them
    base = [0.0, 0.2, 0.4, 0.6, 0.8, 0.85]
    table = _table({"trained": [b + 0.1 for b in base], "untrained": base})
    paired = paired_differences(table, "trained", "untrained", num_resamples=500)
    assert set(paired) == {"colour", "shape", "direction", "background", "adherence", "overall"}
    diff = paired["adherence"]
    assert diff.method == PAIRED and diff.prompts == 6
    assert diff.estimate == pytest.approx(0.1) and diff.low == pytest.approx(0.1) and diff.better
    summary = _summary(table)
    unpaired = interval_differences(summary["trained"], summary["untrained"])["adherence"]
    assert unpaired.method == FROM_INTERVALS and unpaired.estimate == pytest.approx(0.1)
    assert unpaired.low < 0 < unpaired.high and not unpaired.better


def test_verdict_better_worse_overlapping_and_single_prompt():
    better = _table({"trained": [0.9, 0.8, 1.0, 0.9, 0.7, 0.8], "untrained": [0.1, 0.2, 0.0, 0.3, 0.1, 0.2]})
    verdict = evaluation_verdict(_summary(better), better, num_resamples=500)
    untrained = verdict.comparisons[0]
    assert untrained.name == "untrained" and untrained.available and untrained.better
    assert all(d.better and d.low > 0 for d in untrained.differences.values())
    assert verdict.comparisons[1].note == "no champion yet" and not verdict.comparisons[1].available

    worse = _table({"trained": [0.1, 0.2, 0.0, 0.3, 0.1, 0.2], "untrained": [0.9, 0.8, 1.0, 0.9, 0.7, 0.8]})
    diff = evaluation_verdict(_summary(worse), worse, num_resamples=500).comparisons[0].differences["adherence"]
    assert diff.high < 0 and not diff.better

    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, size=6).tolist()
    overlapping = _table({"trained": [min(1.0, v + rng.normal(0, 0.3)) for v in noise], "untrained": noise})
    diff = evaluation_verdict(_summary(overlapping), overlapping, num_resamples=500).comparisons[0].differences[
        "adherence"]
    assert diff.low <= 0 <= diff.high and not diff.better

    # one prompt: its interval has no width, so even a gain is not called better
    one = _table({"trained": [0.9] * 6, "untrained": [0.1] * 6})
    one = one[one["caption"] == PROMPTS[0]]
    diff = evaluation_verdict(_summary(one), one, num_resamples=100).comparisons[0].differences["adherence"]
    assert diff.estimate == pytest.approx(0.8) and diff.prompts == 1 and not diff.better


def test_verdict_against_the_champion_from_its_registry_scores():
    table = _table({"trained": [0.9, 0.8, 1.0, 0.9, 0.7, 0.8], "untrained": [0.1, 0.2, 0.0, 0.3, 0.1, 0.2]})
    summary = _summary(table)
    # the champion's scores as the registry keeps them: flattened evaluation metrics
    weaker = flatten_metrics({"adherence": {"trained": {k: v - 0.6 for k, v in summary["untrained"].items()
                                                        if k not in ("n", "prompts")} | {"prompts": 6.0}}})
    verdict = evaluation_verdict(summary, table, {"name": "m", "version": "3", "scores": weaker}, num_resamples=500)
    champion = verdict.comparisons[1]
    assert champion.label == "champion m v3" and champion.available and champion.better
    assert champion.differences["adherence"].method == FROM_INTERVALS
    same = flatten_metrics({"adherence": {"trained": summary["trained"]}})
    champion = evaluation_verdict(summary, table, {"name": "m", "version": "4", "scores": same}).comparisons[1]
    assert champion.differences["adherence"].estimate == pytest.approx(0.0) and not champion.better
    # a champion registered without adherence scores
    champion = evaluation_verdict(summary, table, {"name": "m", "version": "1", "scores": {}}).comparisons[1]
    assert not champion.available and "no adherence scores" in champion.note


def test_mlflow_run_url():
    assert mlflow_run_url("http://mlflow:5000/", "7", "abc") == "http://mlflow:5000/#/experiments/7/runs/abc"
    assert mlflow_run_url("sqlite:///mlruns/mlflow.db", "1", "r") == "http://127.0.0.1:5000/#/experiments/1/runs/r"


# ------------------------------------------------------------------------------ the report
def _body_start(html: str) -> str:
    return html[html.index("<body>") + len("<body>"):].lstrip()


def _verdict_section(html: str) -> str:
    return html[html.index("<header id='verdict'"):html.index("</header>")]


def test_report_opens_with_the_verdict_and_no_red_flag_when_better(tmp_path):
    table = _table({"trained": [0.9, 0.8, 1.0, 0.9, 0.7, 0.8], "untrained": [0.1, 0.2, 0.0, 0.3, 0.1, 0.2]})
    summary = _summary(table)
    run = {"run_id": "0123abcd", "git_commit": "deadbeef", "tracking_uri": "http://mlflow:5000",
           "url": "http://mlflow:5000/#/experiments/1/runs/0123abcd"}
    verdict = evaluation_verdict(summary, table, None, run, num_resamples=500)
    html = Path(write_report(ReportContent(title="Evaluation of stage3", adherence=summary, verdict=verdict),
                             tmp_path)["html"]).read_text(encoding="utf-8")
    assert _body_start(html).startswith("<header id='verdict' class='verdict'>")
    section = _verdict_section(html)
    assert "<h1>Evaluation of stage3</h1>" in section and "<h2>Verdict</h2>" in section
    assert html.index("</header>") < html.index("Prompt adherence (synthetic vocabulary)")
    assert "Trained vs untrained model: <strong>BETTER</strong>" in section
    assert "Trained vs champion: no champion yet." in section
    assert "not-better" not in section and "NOT BETTER" not in section
    assert "<a href='http://mlflow:5000/#/experiments/1/runs/0123abcd'>0123abcd</a>" in section
    assert "deadbeef" in section
    # one row per attribute, the difference column with its interval
    for label in ("colour", "shape", "direction", "background (right and stable)", "adherence (mean of 4)"):
        assert f"<tr><th>{label}</th>" in section
    assert "trained − untrained (95% CI)" in section and "paired bootstrap over prompts" in section


def test_report_flags_red_where_the_trained_model_is_not_better(tmp_path):
    # colour better, shape worse, the rest equal (difference interval [0, 0])
    rows = []
    for group, colour, shape in (("trained", 0.9, 0.1), ("untrained", 0.1, 0.9)):
        for i, prompt in enumerate(PROMPTS):
            for _ in range(2):
                values = {c: 0.5 for c in SUMMARY_COLUMNS.values()}
                rows.append({"group": group, "caption": prompt} | values | {
                    "colour_ok": colour + 0.01 * i, "shape_ok": shape + 0.01 * i})
    table = pd.DataFrame(rows)
    summary = _summary(table)
    champion = {"name": "m", "version": "2", "scores": flatten_metrics({"adherence": {"trained": summary["trained"]}})}
    verdict = evaluation_verdict(summary, table, champion, {}, num_resamples=500)
    html = Path(write_report(ReportContent(title="t", adherence=summary, verdict=verdict), tmp_path)["html"]).read_text(
        encoding="utf-8")
    section = _verdict_section(html)
    cells = {m.group(1): m.group(2) for m in re.finditer(r"<tr><th>([^<]+)</th>(.*?)</tr>", section)}
    colour_cells = re.findall(r"<td( class='[^']+')?>", cells["colour"])
    # trained, untrained, champion values, then trained − untrained (better), trained − champion (not: equal)
    assert colour_cells[3:] == [" class='better'", " class='not-better'"]
    assert "NOT BETTER" in cells["shape"] and "class='not-better'" in cells["shape"]
    assert "Trained vs untrained model: <strong>NOT BETTER</strong>" in section  # adherence: equal
    assert "class='comparison not-better'" in section
    assert "Trained vs champion m v2: <strong>NOT BETTER</strong>" in section
    assert "No MLflow run (tracking disabled)" in section
    assert ".not-better{color:#b00020" in html  # red


def test_report_without_a_verdict_still_opens_with_one(tmp_path):
    summary = {"trained": {"adherence": 0.5, "adherence_low": 0.4, "adherence_high": 0.6, "prompts": 4.0}}
    html = Path(write_report(ReportContent(title="t", adherence=summary), tmp_path)["html"]).read_text(encoding="utf-8")
    assert _body_start(html).startswith("<header id='verdict'")
    section = _verdict_section(html)
    assert "the untrained model was not evaluated" in section and "no champion yet" in section
    html = Path(write_report(ReportContent(title="t"), tmp_path / "empty")["html"]).read_text(encoding="utf-8")
    assert "not evaluated on synthetic-vocabulary prompts" in _verdict_section(html)
