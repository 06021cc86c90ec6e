"""Great Expectations data contracts: pass, fail (naming expectation and rows), reports, spec checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from opensora_mlops.config import ConfigError
from opensora_mlops.data import contracts as C


def _raw_table(tmp_path, n=4):
    paths = []
    for i in range(n):
        p = tmp_path / f"v{i}.mp4"
        p.write_bytes(b"x")
        paths.append(str(p))
    heights = np.array([144, 256, 240, 240])[:n]
    widths = np.array([256, 144, 426, 240])[:n]
    frames = np.array([48, 60, 1, 75])[:n]
    fps = np.array([24.0, 30.0, np.nan, 25.0])[:n]
    df = pd.DataFrame({
        "path": pd.Series(paths, dtype="str"),
        "text": pd.Series(["a red circle", None, "x", "y"][:n], dtype="str"),
        "num_frames": frames,
        "height": heights,
        "width": widths,
        "aspect_ratio": heights / widths,
        "fps": fps,
        "resolution": heights * widths,
        "duration": frames / fps,
        "source": pd.Series(["synthetic"] * n, dtype="str"),
    })
    return df


def test_raw_contract_passes_and_writes_reports(tmp_path):
    df = _raw_table(tmp_path)
    result = C.validate_table(df, "raw_metadata", tmp_path / "reports")
    assert result.success and not result.failures and result.n_rows == 4
    assert result.evaluated > 30
    report = json.loads(result.report_json.read_text())
    assert report["success"] is True and report["suite"] == "raw_metadata"
    assert report["great_expectations_result"]["statistics"]["unsuccessful_expectations"] == 0
    assert "PASSED" in result.report_markdown.read_text()


def test_raw_contract_failure_names_expectation_and_rows(tmp_path):
    df = _raw_table(tmp_path)
    df.loc[1, "aspect_ratio"] = df.loc[1, "width"] / df.loc[1, "height"]  # 1.1's W/H mistake
    df.loc[3, "fps"] = 500.0
    df.loc[0, "num_frames"] = 0
    (tmp_path / "v2.mp4").unlink()
    with pytest.raises(C.ContractError) as info:
        C.validate_table(df, "raw_metadata", tmp_path / "reports")
    message = str(info.value)
    failed = {(f.expectation, f.column, f.kwargs.get("check")): f for f in info.value.result.failures}
    ar = failed[("expect_column_values_to_be_in_set", None, "aspect_ratio_is_height_over_width")]
    assert ar.rows == [df.loc[1, "path"]]
    fps = failed[("expect_column_values_to_be_between", "fps", None)]
    assert fps.rows == [df.loc[3, "path"]] and fps.unexpected_count == 1
    frames = failed[("expect_column_values_to_be_between", "num_frames", None)]
    assert frames.rows == [df.loc[0, "path"]]
    exists = failed[("expect_column_values_to_be_in_set", None, "file_exists")]
    assert exists.rows == [df.loc[2, "path"]]
    # the exception message alone tells the user what broke and where
    assert "aspect_ratio_is_height_over_width" in message and df.loc[1, "path"] in message
    assert "expect_column_values_to_be_between(column='fps')" in message and df.loc[3, "path"] in message
    md = (tmp_path / "reports" / "raw_metadata.md").read_text()
    assert "FAILED" in md and df.loc[3, "path"] in md
    report = json.loads((tmp_path / "reports" / "raw_metadata.json").read_text())
    assert report["success"] is False and len(report["failures"]) == len(info.value.result.failures)


def test_missing_column_duplicates_and_types(tmp_path):
    df = _raw_table(tmp_path)
    df.loc[1, "path"] = df.loc[0, "path"]
    df["num_frames"] = df["num_frames"].astype(float)
    df = df.drop(columns=["source"])
    result = C.validate_table(df, "raw_metadata", None, raise_on_failure=False)
    assert not result.success and result.report_json is None
    descriptions = "\n".join(f.describe() for f in result.failures)
    assert "expect_table_columns_to_match_set {'missing_columns': ['source']}" in descriptions
    assert "expect_column_values_to_be_unique(column='path')" in descriptions
    assert "expect_column_values_to_be_in_type_list(column='num_frames') {'type': 'int'}" in descriptions


def test_clip_contract_optional_scores_and_pairs(tmp_path):
    df = _raw_table(tmp_path, n=2).drop(columns=["source"])
    df["frame_start"] = [0, 10]
    df["frame_end"] = df["frame_start"] + df["num_frames"]
    df["scene_start"] = df["frame_start"] / df["fps"]
    df["scene_end"] = df["frame_end"] / df["fps"]
    assert C.validate_table(df, "clip_metadata", None).success  # no score columns yet: fine
    df["aes"] = [5.0, 12.0]  # out of [0, 10]
    df.loc[0, "scene_end"] = 0.0  # not after scene_start
    with pytest.raises(C.ContractError) as info:
        C.validate_table(df, "clip_metadata", None)
    failed = {(f.expectation, f.column) for f in info.value.result.failures}
    assert failed == {("expect_column_values_to_be_between", "aes"),
                      ("expect_column_pair_values_a_to_be_greater_than_b", None)}


def test_specs_are_data_and_extensible(tmp_path):
    spec = {"columns": {"path": "str", "bucket_id": "str", "keep": "bool"},
            "unique": ["path"], "in_set": {"bucket_id": ["144p-16", "240p-16"]}, "min_rows": 1}
    C.register_suite("test_bucket_table", spec, replace=True)
    ok = pd.DataFrame({"path": ["a", "b"], "bucket_id": ["144p-16", "240p-16"], "keep": [True, False]})
    assert C.validate_table(ok, "test_bucket_table", None).success
    bad = ok.assign(bucket_id=["144p-16", "999p-1"])
    with pytest.raises(C.ContractError, match="999p-1|b"):
        C.validate_table(bad, "test_bucket_table", None)

    merged = C.extend_suite("test_raw_plus", {"ranges": {"duration": {"min": 0, "max": 10}}}, base="raw_metadata")
    assert merged["ranges"]["duration"] == {"min": 0, "max": 10}
    assert "file_exists" in merged["checks"]
    with pytest.raises(C.ContractError, match="duration"):
        long = _raw_table(tmp_path)
        long.loc[0, ["num_frames", "duration"]] = [480, 20.0]
        C.validate_table(long, "test_raw_plus", None)
    with pytest.raises(C.ContractError):  # a table that is empty breaks min_rows
        C.validate_table(_raw_table(tmp_path).iloc[:0], "raw_metadata", None)


def test_spec_errors_are_clear():
    with pytest.raises(ConfigError, match="colums"):
        C.check_spec({"colums": {}})
    with pytest.raises(ConfigError, match="unknown type family 'integer'"):
        C.check_spec({"columns": {"x": "integer"}})
    with pytest.raises(ConfigError, match="unknown check 'file_exist'"):
        C.check_spec({"checks": ["file_exist"]})
    with pytest.raises(ConfigError, match="maximum"):
        C.check_spec({"ranges": {"x": {"maximum": 3}}})
    with pytest.raises(ConfigError, match="already exists"):
        C.register_suite("raw_metadata", {})
    with pytest.raises(ConfigError, match="unknown contract suite"):
        C.validate_table(pd.DataFrame(), "no_such_suite", None)


def test_raw_contract_checks_the_probe_timing_columns_when_present(tmp_path):
    df = _raw_table(tmp_path)
    df["vfr"] = [False, True, False, False]
    df["frame_jitter"] = [0.1, 2.5, 0.0, 0.3]
    assert C.validate_table(df, "raw_metadata", None).success
    df.loc[2, "frame_jitter"] = -1.0
    df["vfr"] = df["vfr"].astype(object)
    df.loc[0, "vfr"] = "yes"
    with pytest.raises(C.ContractError) as info:
        C.validate_table(df, "raw_metadata", None)
    failed = {(f.expectation, f.column) for f in info.value.result.failures}
    assert ("expect_column_values_to_be_between", "frame_jitter") in failed
    assert ("expect_column_values_to_be_in_type_list", "vfr") in failed
