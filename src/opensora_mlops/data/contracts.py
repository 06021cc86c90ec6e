"""Data contracts: every layer's metadata table passes a Great Expectations (1.x) suite before the next
pipeline reads it.

Suites are data, not code: a *spec* (a plain dict, YAML friendly) names the required columns and their
type families, not-null and unique columns, value ranges, column pairs (``a > b``) and named row checks
(computed boolean columns such as "the file exists" or "aspect_ratio is height/width"). Built-in specs
cover the raw table, the clip table and the filtered table; other stages register their own with
:func:`register_suite` or extend one with :func:`extend_suite`.

:func:`validate_table` runs a suite on a pandas DataFrame, writes a readable report (JSON with the full
GX result, and Markdown) under ``report_dir`` and raises :class:`ContractError` naming each failed
expectation and the first offending rows (by ``path``).

Great Expectations is slow to start (seconds), so one ephemeral context (pandas data source, one
whole-dataframe batch definition) is built per process and the suites are cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opensora_mlops.config import ConfigError, check_keys

# GX must never phone home (no network at run time) nor draw its per-metric progress bars.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

# --------------------------------------------------------------------------------------------------
# Spec vocabulary
# --------------------------------------------------------------------------------------------------

#: Type family → dtype names for GX's ``expect_column_values_to_be_in_type_list``. String columns are
#: handed to GX as object columns (GX 1.x does not recognise pandas 3's "str" dtype), which GX checks
#: value by value against python ``str`` (nulls allowed).
TYPE_FAMILIES: dict[str, list[str]] = {
    "int": ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
            "Int8Dtype", "Int16Dtype", "Int32Dtype", "Int64Dtype", "UInt8Dtype", "UInt16Dtype", "UInt32Dtype",
            "UInt64Dtype"],
    "float": ["float16", "float32", "float64", "Float32Dtype", "Float64Dtype"],
    "str": ["str"],
    "bool": ["bool", "BooleanDtype"],
}
TYPE_FAMILIES["number"] = TYPE_FAMILIES["int"] + TYPE_FAMILIES["float"]

SPEC_KEYS = ("columns", "optional_columns", "not_null", "unique", "ranges", "pairs", "checks", "min_rows",
             "in_set", "description")
RANGE_KEYS = ("min", "max", "strict_min", "strict_max", "mostly")
PAIR_KEYS = ("greater", "than", "or_equal")

#: Relative tolerance of the derived-value checks (aspect ratio, duration).
RELATIVE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class RowCheck:
    """A named row-level check: ``fn(df) -> bool Series`` (True = row is fine) over ``columns``."""

    description: str
    columns: tuple[str, ...]
    fn: Callable[[pd.DataFrame], pd.Series]


def _aspect_ratio_ok(df: pd.DataFrame) -> pd.Series:
    expected = df["height"].astype(float) / df["width"].astype(float)
    return (df["aspect_ratio"].astype(float) - expected).abs() <= RELATIVE_TOLERANCE * expected.abs().clip(lower=1)


def _resolution_ok(df: pd.DataFrame) -> pd.Series:
    return df["resolution"].astype(float) == df["height"].astype(float) * df["width"].astype(float)


def _duration_ok(df: pd.DataFrame) -> pd.Series:
    fps = df["fps"].astype(float)
    expected = df["num_frames"].astype(float) / fps
    # a frame of slack: containers round their durations to their time base
    close = (df["duration"].astype(float) - expected).abs() <= 1.0 / fps + RELATIVE_TOLERANCE * expected
    return close | fps.isna()


def _fps_known_for_videos(df: pd.DataFrame) -> pd.Series:
    return (df["num_frames"] <= 1) | df["fps"].notna()


def _file_exists(df: pd.DataFrame) -> pd.Series:
    return df["path"].map(lambda p: isinstance(p, str) and Path(p).is_file()).astype(bool)


ROW_CHECKS: dict[str, RowCheck] = {
    "aspect_ratio_is_height_over_width": RowCheck(
        "aspect_ratio equals height / width (H/W, not W/H) within 0.1%", ("aspect_ratio", "height", "width"),
        _aspect_ratio_ok),
    "resolution_is_height_times_width": RowCheck(
        "resolution equals height * width", ("resolution", "height", "width"), _resolution_ok),
    "duration_is_frames_over_fps": RowCheck(
        "duration equals num_frames / fps (within one frame)", ("duration", "num_frames", "fps"), _duration_ok),
    "fps_known_for_videos": RowCheck(
        "every row with more than one frame has an fps", ("num_frames", "fps"), _fps_known_for_videos),
    "file_exists": RowCheck("the file at path exists", ("path",), _file_exists),
}


def register_row_check(name: str, description: str, columns: tuple[str, ...],
                       fn: Callable[[pd.DataFrame], pd.Series]) -> None:
    """Add a named row check that specs can list under ``checks``."""
    ROW_CHECKS[name] = RowCheck(description, tuple(columns), fn)


_RAW_COLUMNS = {
    "path": "str",
    "text": "str",
    "num_frames": "int",
    "height": "int",
    "width": "int",
    "aspect_ratio": "float",
    "fps": "float",
    "resolution": "int",
    "duration": "float",
    "source": "str",
}
_RAW_RANGES = {
    "num_frames": {"min": 1},
    "height": {"min": 16, "max": 8192},
    "width": {"min": 16, "max": 8192},
    "fps": {"min": 0, "max": 240, "strict_min": True},
    "aspect_ratio": {"min": 1 / 8192 * 16, "max": 8192 / 16},
    "duration": {"min": 0},
}
_CLIP_COLUMNS = {
    **_RAW_COLUMNS,
    "scene_start": "float",
    "scene_end": "float",
    "frame_start": "int",
    "frame_end": "int",
}
_SCORE_RANGES = {
    "aes": {"min": 0, "max": 10},
    "flow": {"min": 0},
    "ocr": {"min": 0},
    "match": {"min": -1, "max": 1},
}
_SCORE_COLUMNS = {"aes": "number", "flow": "number", "ocr": "number", "match": "number", "camera_motion": "str"}
#: The probe's frame-timing columns (variable frame rate re-timed to ``fps``; interval spread).
_TIMING_COLUMNS = {"vfr": "bool", "frame_jitter": "float"}

#: Built-in suite specs, by table (catalog) name.
BUILTIN_SPECS: dict[str, dict[str, Any]] = {
    "raw_metadata": {
        "description": "ingestion output: one row per probed, readable video or image",
        "columns": _RAW_COLUMNS,
        "optional_columns": _TIMING_COLUMNS,
        "not_null": ["path", "num_frames", "height", "width", "aspect_ratio", "resolution", "source"],
        "unique": ["path"],
        "ranges": {**_RAW_RANGES, "frame_jitter": {"min": 0}},
        "checks": ["aspect_ratio_is_height_over_width", "resolution_is_height_times_width",
                   "duration_is_frames_over_fps", "fps_known_for_videos", "file_exists"],
        "min_rows": 1,
    },
    "clip_metadata": {
        "description": "curation output: one row per cut clip (scenes frame precise), scores where computed",
        "columns": {k: v for k, v in _CLIP_COLUMNS.items() if k != "source"},
        "optional_columns": {**_SCORE_COLUMNS, **_TIMING_COLUMNS},
        "not_null": ["path", "num_frames", "height", "width", "aspect_ratio", "resolution",
                     "scene_start", "scene_end", "frame_start", "frame_end"],
        "unique": ["path"],
        "ranges": {**_RAW_RANGES, "scene_start": {"min": 0}, "frame_start": {"min": 0}, **_SCORE_RANGES},
        "pairs": [{"greater": "scene_end", "than": "scene_start"}, {"greater": "frame_end", "than": "frame_start"}],
        "checks": ["aspect_ratio_is_height_over_width", "resolution_is_height_times_width",
                   "duration_is_frames_over_fps", "fps_known_for_videos", "file_exists"],
        "min_rows": 1,
    },
    "filtered_clips": {
        "description": "a stage's training table: captioned clips that passed the stage's filters",
        "columns": {k: v for k, v in _CLIP_COLUMNS.items() if k != "source"},
        "optional_columns": {**_SCORE_COLUMNS, **_TIMING_COLUMNS},
        "not_null": ["path", "text", "num_frames", "height", "width", "aspect_ratio", "resolution"],
        "unique": ["path"],
        "ranges": {**_RAW_RANGES, "scene_start": {"min": 0}, "frame_start": {"min": 0}, **_SCORE_RANGES},
        "pairs": [{"greater": "scene_end", "than": "scene_start"}, {"greater": "frame_end", "than": "frame_start"}],
        "checks": ["aspect_ratio_is_height_over_width", "resolution_is_height_times_width",
                   "fps_known_for_videos", "file_exists"],
        "min_rows": 1,
    },
}

_REGISTRY: dict[str, dict[str, Any]] = {}


def check_spec(spec: Mapping[str, Any], where: str = "contract spec") -> dict[str, Any]:
    """Validate a suite spec's shape (unknown keys, type families, check names); returns a plain copy."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(spec).__name__}")
    check_keys(spec, SPEC_KEYS, where)
    out = copy.deepcopy(dict(spec))
    for key in ("columns", "optional_columns"):
        cols = out.setdefault(key, {})
        if not isinstance(cols, Mapping):
            raise ConfigError(f"{where}.{key} must map column -> type family, got {cols!r}")
        for col, family in cols.items():
            if family not in TYPE_FAMILIES and family != "any":
                raise ConfigError(f"{where}.{key}.{col}: unknown type family {family!r}; known: {sorted(TYPE_FAMILIES)} or 'any'")
        out[key] = dict(cols)
    for key in ("not_null", "unique", "checks"):
        value = out.setdefault(key, [])
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}.{key} must be a list, got {value!r}")
        out[key] = list(value)
    for name in out["checks"]:
        if name not in ROW_CHECKS:
            raise ConfigError(f"{where}.checks: unknown check {name!r}; known: {sorted(ROW_CHECKS)}")
    out.setdefault("ranges", {})
    for col, rng in out["ranges"].items():
        if not isinstance(rng, Mapping):
            raise ConfigError(f"{where}.ranges.{col} must be a mapping, got {rng!r}")
        check_keys(rng, RANGE_KEYS, f"{where}.ranges.{col}")
        if "min" not in rng and "max" not in rng:
            raise ConfigError(f"{where}.ranges.{col} needs 'min' and/or 'max'")
    out.setdefault("pairs", [])
    for i, pair in enumerate(out["pairs"]):
        check_keys(pair, PAIR_KEYS, f"{where}.pairs[{i}]")
        if "greater" not in pair or "than" not in pair:
            raise ConfigError(f"{where}.pairs[{i}] needs 'greater' and 'than'")
    out.setdefault("in_set", {})
    out.setdefault("min_rows", 0)
    if int(out["min_rows"]) < 0:
        raise ConfigError(f"{where}.min_rows must be >= 0, got {out['min_rows']}")
    out.setdefault("description", "")
    return out


def register_suite(name: str, spec: Mapping[str, Any], *, replace: bool = False) -> dict[str, Any]:
    """Register ``spec`` under ``name`` (refuses to overwrite unless ``replace``)."""
    if not replace and (name in _REGISTRY or name in BUILTIN_SPECS):
        raise ConfigError(f"contract suite {name!r} already exists; pass replace=True or use extend_suite")
    _REGISTRY[name] = check_spec(spec, f"contract suite {name!r}")
    return _REGISTRY[name]


def merge_specs(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` added: mappings merged (extra wins per key), lists concatenated."""
    out = check_spec(base)
    extra = check_spec(extra)
    for key, value in extra.items():
        if key in ("columns", "optional_columns", "ranges", "in_set"):
            out[key] = {**out[key], **value}
        elif key in ("not_null", "unique", "checks"):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        elif key == "pairs":
            out[key] = out[key] + [p for p in value if p not in out[key]]
        elif key == "min_rows":
            out[key] = max(int(out[key]), int(value))
        elif key == "description" and value:
            out[key] = value
    return out


def extend_suite(name: str, extra: Mapping[str, Any], *, base: str | None = None) -> dict[str, Any]:
    """Register ``name`` as suite ``base`` (default: ``name`` itself) plus the expectations in ``extra``."""
    merged = merge_specs(get_suite_spec(base or name), extra)
    _REGISTRY[name] = merged
    return merged


def get_suite_spec(name: str) -> dict[str, Any]:
    if name in _REGISTRY:
        return copy.deepcopy(_REGISTRY[name])
    if name in BUILTIN_SPECS:
        return check_spec(BUILTIN_SPECS[name], f"contract suite {name!r}")
    raise ConfigError(f"unknown contract suite {name!r}; known: {sorted(set(_REGISTRY) | set(BUILTIN_SPECS))}")


# --------------------------------------------------------------------------------------------------
# Great Expectations
# --------------------------------------------------------------------------------------------------


class _GX:
    """One ephemeral context per process: GX's import and context set-up cost seconds."""

    _instance: _GX | None = None

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = self.context.data_sources.add_pandas(name="opensora_mlops_tables")
        asset = source.add_dataframe_asset(name="table")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_table")
        self.suites: dict[str, Any] = {}

    @classmethod
    def get(cls) -> _GX:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def _check_column(name: str) -> str:
    return f"__check__{name}"


def build_suite(name: str, spec: Mapping[str, Any], present_columns: set[str] | None = None):
    """A ``great_expectations.ExpectationSuite`` for ``spec``.

    Expectations on optional columns (and ranges on columns the spec does not require) are included
    only when the column is in ``present_columns`` ("where present"); None includes them all.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    spec = check_spec(spec, f"contract suite {name!r}")
    required = spec["columns"]
    optional = {c: t for c, t in spec["optional_columns"].items()
                if present_columns is None or c in present_columns}

    def applies(col: str) -> bool:
        # a missing required column is reported once, by the column-set expectation, not by every
        # expectation on it
        return present_columns is None or col in present_columns

    suite = gx.ExpectationSuite(name=name)
    add = suite.add_expectation
    if spec["min_rows"]:
        add(gxe.ExpectTableRowCountToBeBetween(min_value=int(spec["min_rows"])))
    if required:
        add(gxe.ExpectTableColumnsToMatchSet(column_set=list(required), exact_match=False))
    for col, family in {**required, **optional}.items():
        if family != "any" and applies(col):
            add(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=TYPE_FAMILIES[family]))
    for col in spec["not_null"]:
        if applies(col):
            add(gxe.ExpectColumnValuesToNotBeNull(column=col))
    for col in spec["unique"]:
        if applies(col):
            add(gxe.ExpectColumnValuesToBeUnique(column=col))
    for col, rng in spec["ranges"].items():
        if not applies(col):
            continue
        add(gxe.ExpectColumnValuesToBeBetween(
            column=col,
            min_value=rng.get("min"),
            max_value=rng.get("max"),
            strict_min=bool(rng.get("strict_min", False)),
            strict_max=bool(rng.get("strict_max", False)),
            mostly=float(rng.get("mostly", 1.0)),
        ))
    for col, values in spec["in_set"].items():
        if applies(col):
            add(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(values)))
    for pair in spec["pairs"]:
        if applies(pair["greater"]) and applies(pair["than"]):
            add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A=pair["greater"], column_B=pair["than"], or_equal=bool(pair.get("or_equal", False))))
    for check in spec["checks"]:
        add(gxe.ExpectColumnValuesToBeInSet(column=_check_column(check), value_set=[True]))
    return suite


def _suite_for(name: str, spec: Mapping[str, Any], present: set[str]):
    gxc = _GX.get()
    mentioned = (set(spec["columns"]) | set(spec["optional_columns"]) | set(spec["ranges"]) | set(spec["in_set"])
                 | set(spec["not_null"]) | set(spec["unique"]) | {p[k] for p in spec["pairs"] for k in ("greater", "than")})
    key_material = json.dumps([name, spec, sorted(mentioned & present)], sort_keys=True, default=str)
    key = f"{name}-{hashlib.sha1(key_material.encode()).hexdigest()[:12]}"
    if key not in gxc.suites:
        gxc.suites[key] = gxc.context.suites.add(build_suite(key, spec, present))
    return gxc.suites[key]


# --------------------------------------------------------------------------------------------------
# Validation and reports
# --------------------------------------------------------------------------------------------------


@dataclass
class FailedExpectation:
    expectation: str  # GX type, e.g. "expect_column_values_to_be_between"
    column: str | None
    kwargs: dict[str, Any]
    unexpected_count: int | None
    rows: list[str]  # first offending paths (or row indices where the table has no path)
    observed: Any = None
    error: str | None = None

    def describe(self) -> str:
        what = self.expectation + (f"(column={self.column!r})" if self.column else "")
        details = {k: v for k, v in self.kwargs.items() if k not in ("column", "batch_id")}
        if details:
            what += f" {details}"
        parts = [what]
        if self.unexpected_count:
            parts.append(f"{self.unexpected_count} row(s) fail")
        if self.rows:
            parts.append("first: " + ", ".join(self.rows))
        if self.observed is not None and not self.rows:
            parts.append(f"observed {self.observed!r}")
        if self.error:
            parts.append(f"could not run: {self.error}")
        return "; ".join(parts)


@dataclass
class ContractResult:
    suite: str
    success: bool
    n_rows: int
    evaluated: int
    failures: list[FailedExpectation] = field(default_factory=list)
    report_json: Path | None = None
    report_markdown: Path | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "success": self.success,
            "rows": self.n_rows,
            "expectations": self.evaluated,
            "failed": [f.describe() for f in self.failures],
            "report_json": str(self.report_json) if self.report_json else None,
            "report_markdown": str(self.report_markdown) if self.report_markdown else None,
        }


class ContractError(ValueError):
    """A table broke its data contract; the message lists the failed expectations and rows."""

    def __init__(self, result: ContractResult) -> None:
        self.result = result
        lines = [f"data contract {result.suite!r} failed on {result.n_rows} rows: "
                 f"{len(result.failures)} of {result.evaluated} expectations failed"]
        lines += [f"  - {f.describe()}" for f in result.failures]
        if result.report_markdown:
            lines.append(f"report: {result.report_markdown}")
        super().__init__("\n".join(lines))


MAX_ROWS_REPORTED = 5


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _failed_rows(result: Mapping[str, Any], key_column: str | None) -> list[str]:
    rows = []
    for entry in result.get("unexpected_index_list") or []:
        if isinstance(entry, Mapping) and key_column and key_column in entry:
            rows.append(str(entry[key_column]))
        else:
            rows.append(f"row {entry}")
        if len(rows) >= MAX_ROWS_REPORTED:
            break
    if not rows:
        rows = [repr(v) for v in (result.get("partial_unexpected_list") or [])[:MAX_ROWS_REPORTED]]
    return rows


def validate_table(df: pd.DataFrame, suite: str | Mapping[str, Any], report_dir: str | Path | None,
                   *, name: str | None = None, raise_on_failure: bool = True) -> ContractResult:
    """Validate ``df`` against a registered suite (by name) or a spec; write reports; raise on failure.

    Reports: ``<report_dir>/<name>.json`` (summary and the full GX validation result) and
    ``<report_dir>/<name>.md``; ``report_dir`` None writes none.
    """
    if isinstance(suite, str):
        name = name or suite
        spec = get_suite_spec(suite)
    else:
        if not name:
            raise ValueError("validate_table with a spec needs a name for the suite and its report")
        spec = check_spec(suite, f"contract suite {name!r}")
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"validate_table expects a pandas DataFrame, got {type(df).__name__}")

    table = df.reset_index(drop=True).copy()
    for col in table.columns:
        if isinstance(table[col].dtype, pd.StringDtype) or (
            isinstance(table[col].dtype, pd.ArrowDtype) and pd.api.types.is_string_dtype(table[col].dtype)
        ):
            table[col] = table[col].astype(object)
    skipped_checks = []
    for check in spec["checks"]:
        row_check = ROW_CHECKS[check]
        if all(c in table.columns for c in row_check.columns):
            table[_check_column(check)] = row_check.fn(table).fillna(False).astype(bool).to_numpy()
        else:
            # the columns' absence is reported by expect_column_to_exist; the check cannot run
            table[_check_column(check)] = False
            skipped_checks.append(check)

    gxc = _GX.get()
    gx_suite = _suite_for(name, spec, set(table.columns))
    key_column = "path" if "path" in table.columns else None
    result_format: dict[str, Any] = {"result_format": "COMPLETE"}
    if key_column:
        result_format["unexpected_index_column_names"] = [key_column]
    batch = gxc.batch_definition.get_batch(batch_parameters={"dataframe": table})
    validation = batch.validate(gx_suite, result_format=result_format)
    raw = validation.to_json_dict()

    failures = []
    for item in raw["results"]:
        if item["success"]:
            continue
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        column = kwargs.get("column")
        if column and column.startswith("__check__"):
            check = column.removeprefix("__check__")
            kwargs = {"check": check, "means": ROW_CHECKS[check].description}
            if check in skipped_checks:
                kwargs["missing_columns"] = [c for c in ROW_CHECKS[check].columns if c not in df.columns]
            column = None
        exception = item.get("exception_info") or {}
        error = None
        if exception.get("raised_exception"):
            error = exception.get("exception_message")
        else:  # GX ≥1.x nests exception info per metric
            for info in exception.values() if isinstance(exception, Mapping) else []:
                if isinstance(info, Mapping) and info.get("raised_exception"):
                    error = str(info.get("exception_message"))
                    break
        res = item.get("result") or {}
        if "type_list" in kwargs:  # name the family, not its dozen dtype names
            family = next((f for f, names in TYPE_FAMILIES.items() if names == kwargs["type_list"]), None)
            if family:
                kwargs = {k: v for k, v in kwargs.items() if k != "type_list"} | {"type": family}
        if config["type"] == "expect_table_columns_to_match_set":
            kwargs = {"missing_columns": sorted(set(kwargs["column_set"]) - set(df.columns))}
            res = {}
        elif kwargs.get("missing_columns"):  # the row check could not run: no rows to blame
            res = {}
            error = f"missing column(s) {kwargs['missing_columns']}"
        failures.append(FailedExpectation(
            expectation=config["type"],
            column=column,
            kwargs=_jsonable(kwargs),
            unexpected_count=res.get("unexpected_count"),
            rows=_failed_rows(res, key_column),
            observed=_jsonable(res.get("observed_value")),
            error=error,
        ))
    contract = ContractResult(
        suite=name, success=bool(raw["success"]), n_rows=len(df),
        evaluated=int(raw["statistics"]["evaluated_expectations"]), failures=failures,
    )
    if report_dir is not None:
        _write_reports(contract, spec, raw, Path(report_dir))
    if raise_on_failure and not contract.success:
        raise ContractError(contract)
    return contract


def _write_reports(contract: ContractResult, spec: Mapping[str, Any], raw: Mapping[str, Any], report_dir: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    json_path = report_dir / f"{contract.suite}.json"
    md_path = report_dir / f"{contract.suite}.md"
    contract.report_json, contract.report_markdown = json_path, md_path
    payload = {
        "validated_at": stamp,
        **contract.summary(),
        "spec": _jsonable(spec),
        "failures": [_jsonable(f.__dict__) for f in contract.failures],
        "great_expectations_result": _jsonable(raw),
    }
    json_path.write_text(json.dumps(payload, indent=1), encoding="utf-8")

    status = "PASSED" if contract.success else "FAILED"
    lines = [
        f"# Data contract `{contract.suite}`: {status}",
        "",
        f"- validated at {stamp}, {contract.n_rows} rows, {contract.evaluated} expectations, "
        f"{len(contract.failures)} failed",
    ]
    if spec.get("description"):
        lines.append(f"- table: {spec['description']}")
    lines += ["", "| expectation | column / check | result | failing rows (first) |", "|---|---|---|---|"]
    for item in raw["results"]:
        config = item["expectation_config"]
        kwargs = config["kwargs"]
        column = str(kwargs.get("column") or kwargs.get("column_A", "") or "")
        if column.startswith("__check__"):
            column = "check: " + column.removeprefix("__check__")
        elif "column_B" in kwargs:
            column = f"{kwargs['column_A']} > {kwargs['column_B']}"
        elif "column_set" in kwargs:
            column = "required: " + ", ".join(kwargs["column_set"])
        res = item.get("result") or {}
        rows = ", ".join(_failed_rows(res, "path")) if not item["success"] else ""
        count = res.get("unexpected_count")
        outcome = "ok" if item["success"] else (f"FAIL ({count} rows)" if count else "FAIL")
        lines.append(f"| `{config['type']}` | {column.replace('|', '/')} | {outcome} | {rows.replace('|', '/')} |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
