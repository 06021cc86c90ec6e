"""benchmarks/gpu_check.sh --dry-run: every GPU-check case built at a tiny size on CPU, one JSON line each."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
COMMON = {"case", "kind", "status", "device", "dtype", "torch", "dry_run", "compile", "peak_tflops", "wall_s",
          "peak_memory_gib"}  # fmt: skip
MEASURED = {"model", "params_m", "frames", "height", "width", "batch", "latent", "first_step_s", "step_s",
            "s_per_step", "flops_per_step", "tflops_per_s"}  # fmt: skip


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_check(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", GPU_CHECK_TIMEOUT="280")
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path_factory.mktemp("gpu_check") / "dry.jsonl"
    result = run_check(out)
    return result, read_lines(out)


def test_dry_run_writes_one_line_per_case_and_succeeds(dry_run):
    result, lines = dry_run
    assert result.returncode == 0, result.stderr[-3000:]
    module = gpu_check_module()
    settings = module.settings_from_args(module.argparse.Namespace(
        dry_run=True, compile_backend=None, compile_scope="blocks", peak_tflops=989.0, budget_s=None, tiny_steps=20))
    expected = [case.name for case in module.GpuCheck(settings).cases()]
    assert [line["case"] for line in lines] == expected
    assert {"train", "sample_cfg", "zero2_train", "tiny_train"} == {line["kind"] for line in lines}
    # stdout carries the same lines (what a device call's output shows)
    echoed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["case"] for line in echoed] == expected
    for line in lines:
        assert set(line) >= COMMON, line["case"]
        assert line["dry_run"] is True and line["device"].startswith("cpu") and line["dtype"] == "float32"
        assert line["status"] in ("ok", "skipped"), (line["case"], line.get("error"), line.get("traceback"))


def test_measured_cases_have_times_flops_and_no_cpu_mfu(dry_run):
    _, lines = dry_run
    by_name = {line["case"]: line for line in lines}
    measured = [line for line in lines if line["kind"] in ("train", "sample_cfg")]
    assert len(measured) == 12  # 2 sizes x (4 training variants + 2 sampling variants)
    for line in measured:
        assert set(line) >= MEASURED, line["case"]
        assert len(line["step_s"]) == 2 and all(t > 0 for t in line["step_s"])
        assert line["s_per_step"] > 0 and line["flops_per_step"] > 0 and line["tflops_per_s"] > 0
        assert "mfu" not in line  # a CPU against an accelerator's peak would mean nothing
        assert line["latent"][2] == line["frames"] and line["latent"][3:] == [48 // 8, 80 // 8]
    for frames in (2, 4):
        train = by_name[f"train_eager_{frames}f"]
        assert train["latent"][0] == train["batch"] and train["grad_checkpointing"] is False
        assert by_name[f"train_eager_ckpt_{frames}f"]["grad_checkpointing"] is True
        # compiled and checkpointed variants use the eager count (model FLOPs, no recomputation)
        for variant in ("train_eager_ckpt", "train_compiled", "train_compiled_ckpt"):
            assert by_name[f"{variant}_{frames}f"]["flops_per_step"] == train["flops_per_step"]
        assert all(by_name[f"{v}_{frames}f"]["compile"] == "eager/blocks" for v in ("train_compiled", "sample_cfg_compiled"))
        assert train["compile"] is None and train["loss"] == train["loss"]  # a number, not NaN
    # training = forward + backward (2x the matmuls, 2.5x attention); sampling at batch 1 runs the network
    # on the doubled batch, so with training batch 2 both see the same tokens: a ratio near 3 shows that
    # the counter saw the backward and (CPU flash kernel registered) the attention
    ratio = by_name["train_eager_2f"]["flops_per_step"] / by_name["sample_cfg_eager_2f"]["flops_per_step"]
    assert 2.8 < ratio < 3.3, ratio
    assert by_name["sample_cfg_eager_2f"]["network_batch"] == 2 and by_name["sample_cfg_eager_2f"]["finite"]
    compiled = [line for line in lines if line["compile"]]
    assert compiled and all(isinstance(line["graph_breaks"], int) for line in compiled)
    assert compiled[0]["graphs_compiled"] >= 1  # Dynamo really captured a graph


def test_tiny_training_loss_falls_and_zero2_needs_cuda(dry_run):
    _, lines = dry_run
    tiny = next(line for line in lines if line["case"] == "tiny_train")
    assert tiny["steps"] == 20 and len(tiny["losses"]) == 20
    assert tiny["loss_fell"] is True and tiny["eval_loss_after"] < 0.9 * tiny["eval_loss_before"]
    zero2 = next(line for line in lines if line["kind"] == "zero2_train")
    assert zero2["plugin"].startswith("LowLevelZeroPlugin") and zero2["optimizer"] == "HybridAdam"
    if torch.cuda.is_available():
        assert zero2["status"] == "ok" and zero2["finite"]
    else:
        assert zero2["status"] == "skipped" and "CUDA is absent" in zero2["reason"]


def test_failures_are_recorded_the_run_goes_on_and_a_flat_loss_fails_it(tmp_path):
    """One tiny step cannot cut the loss by 10%: exit status 1. An unknown compile backend breaks the
    compiled cases: each records its error and the cases after it still run."""
    out = tmp_path / "broken.jsonl"
    result = run_check(out, "--cases", "tiny_train,sample_cfg", "--tiny-steps", "1", "--compile-backend",
                       "no_such_backend")  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    lines = {line["case"]: line for line in read_lines(out)}
    assert list(lines) == ["tiny_train", "sample_cfg_eager_2f", "sample_cfg_eager_4f", "sample_cfg_compiled_2f",
                           "sample_cfg_compiled_4f"]  # fmt: skip
    tiny = lines["tiny_train"]
    assert tiny["status"] == "error" and tiny["loss_fell"] is False and "did not fall" in tiny["error"]
    assert lines["sample_cfg_eager_4f"]["status"] == "ok"
    for name in ("sample_cfg_compiled_2f", "sample_cfg_compiled_4f"):
        assert lines[name]["status"] == "error" and "no_such_backend" in lines[name]["error"]
        assert "Traceback" in lines[name]["traceback"]


def test_other_failures_exit_with_status_2(tmp_path):
    module = gpu_check_module()
    settings = module.settings_from_args(module.argparse.Namespace(
        dry_run=True, compile_backend="no_such_backend", compile_scope="model", peak_tflops=989.0, budget_s=None,
        tiny_steps=20))  # fmt: skip
    out = tmp_path / "compiled.jsonl"
    assert module.run_all(settings, out, ["sample_cfg_compiled_2f"]) == module.EXIT_CASE_FAILED
    (line,) = read_lines(out)
    assert line["status"] == "error" and line["compile"] == "no_such_backend/model"
