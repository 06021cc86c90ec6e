"""The stage trainer: config checks, training, resume (in-process and after kill -9), 2 processes, learning."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from opensora_mlops.config import ConfigError
from opensora_mlops.training import tiny
from opensora_mlops.training.checkpoint import latest_checkpoint, read_state
from opensora_mlops.training.latents import LatentCache, bucket_config_from_table, check_bucket_table
from opensora_mlops.training.launch import launch
from opensora_mlops.training.trainer import load_train_config
from opensora_mlops.training.validation import validation_loss


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny_training")
    clips = tiny.write_clips(root / "clips", count=7)
    manifest = tiny.build_cache(tiny.bucket_table(clips), root / "cache", holdout_fraction=0.25)
    assert manifest["num_train"] >= 4 and manifest["num_val"] >= 1
    return manifest


REFERENCE_STEPS = 6


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """An uninterrupted run (checkpoints every 2 steps) that the resumed runs must reproduce exactly."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = launch(tiny.train_config(run, cache["train_dir"], max_steps=REFERENCE_STEPS), progress=False)
    return run, result


def _weights(run_dir: Path, which: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / which / "model.safetensors"))


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ bad input, before any training


def test_bad_configs_fail_before_training_with_clear_messages(tmp_path):
    base = tiny.train_config(tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ConfigError, match="enable_flashattn"):  # 1.1's silently swallowed typo
        load_train_config({**base, "enable_flashattn": True})
    with pytest.raises(ConfigError, match="plugin must be one of"):
        load_train_config({**base, "plugin": "zero3"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs CUDA"):
            load_train_config({**base, "plugin": "zero2", "dtype": "bf16"})
        with pytest.raises(ConfigError, match="HybridAdam"):
            load_train_config({**base, "optimizer": "hybrid_adam"})
    with pytest.raises(ConfigError, match="no checkpoint at"):
        load_train_config({**base, "init_from": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="stage1.data"):
        load_train_config({**base, "data": {"cache_dirr": "x"}})
    # image views read frames of cached clips: online data has none
    online = {**base, "data": {"source": "online", "bucket_table": "t.parquet", "vae": {"type": "tiny"},
                               "text_encoder": {"type": "minilm"}, "image_views": 2, "image_batch_size": 8}}
    with pytest.raises(ConfigError, match="image_views.*data_source: cache"):
        launch(online, progress=False)


def test_bucket_table_problems_are_named():
    table = pd.DataFrame({
        "path": ["a.mp4", "b.mp4"], "text": ["a", "b"], "fps": [8.0, 8.0], "bucket_id": ["999p/2/1.00", None],
        "bucket_resolution": ["999p", None], "bucket_num_frames": [2, None], "bucket_height": [100, None],
        "bucket_width": [100, None], "batch_size": [2, None], "keep": [True, False],
    })  # fmt: skip
    kept = check_bucket_table(table)
    assert len(kept) == 1
    with pytest.raises(ConfigError, match="unknown resolution '999p'"):
        bucket_config_from_table(kept)
    with pytest.raises(ConfigError, match="no kept rows"):
        check_bucket_table(table.assign(keep=False))
    with pytest.raises(ConfigError, match="lacks column"):
        check_bucket_table(table.drop(columns=["bucket_id"]))


# ------------------------------------------------------------------ training in-process


def test_a_stage_trains_logs_and_writes_final_weights(cache, tmp_path):
    events = []
    run = tmp_path / "run"
    result = launch(tiny.train_config(run, cache["train_dir"], max_steps=4),
                    callback=lambda kind, payload: events.append((kind, payload)), progress=False)
    assert result.steps == 4 and result.samples_seen == 8 and result.resumed_from is None
    metrics = [p for k, p in events if k == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    for m in metrics:
        assert {"loss", "grad_norm", "lr", "samples_per_s", "tokens_per_s"} <= set(m)
        assert m["loss"] > 0 and m["grad_norm"] > 0 and m["tokens_per_s"] > m["samples_per_s"]
    # 2 frames x (18/2) x (32/2) patches per sample
    assert metrics[0]["tokens_per_s"] == pytest.approx(metrics[0]["samples_per_s"] * 2 * 9 * 16)
    assert [k for k, _ in events if k == "checkpoint"] == ["checkpoint"]  # step 2 (4 is the final save)
    assert latest_checkpoint(run / "checkpoints").name.endswith("04")
    model, ema = _weights(run, "model"), _weights(run, "ema")
    assert set(model) == set(ema)
    assert any(not torch.equal(model[k], ema[k]) for k in model)  # EMA lags the raw weights
    assert [e["event"] for e in _events(run)][-1] == "end"


@pytest.mark.parametrize("scheduler", [{"type": "iddpm", "prediction": "v", "num_timesteps": 1000},
                                       {"type": "rflow", "num_sampling_steps": 30}], ids=["v", "rflow"])
def test_the_training_scheduler_is_saved_with_the_weights_and_validated_with(cache, tmp_path, scheduler):
    from opensora_mlops.diffusion import build_scheduler, load_scheduler_config

    events = []
    run = tmp_path / "run"
    launch(tiny.train_config(run, cache["train_dir"], max_steps=2, ckpt_every=0, scheduler=scheduler),
           callback=lambda kind, payload: events.append((kind, payload)), progress=False)
    expected = build_scheduler(scheduler).to_config()
    for which in ("model", "ema"):
        assert load_scheduler_config(run / "final" / which) == expected
    metrics = [p for k, p in events if k == "metrics"]
    assert all(m["x0_mse"] > 0 for m in metrics)
    from opensora_mlops.models.stdit2 import STDiT2

    trained = STDiT2.from_pretrained(run / "final" / "ema")
    val = validation_loss(trained, LatentCache(cache["val_dir"]), scheduler=scheduler)
    assert val["val_x0_mse"] > 0 and val["val_loss"] > 0
    with pytest.raises(ConfigError, match="prediction"):
        load_train_config(tiny.train_config(run, cache["train_dir"], scheduler={"type": "iddpm", "prediction": "x"}))


def test_ema_warm_up_follows_early_training_then_settles_on_the_decay():
    from opensora_mlops.training.trainer import ema_decay_at

    assert ema_decay_at(0, 0.995, True) == pytest.approx(0.1)
    assert ema_decay_at(10, 0.995, True) == pytest.approx(11 / 20)
    assert ema_decay_at(5000, 0.995, True) == 0.995
    assert ema_decay_at(0, 0.995, False) == 0.995
    decays = [ema_decay_at(n, 0.995, True) for n in range(3000)]
    assert all(b >= a for a, b in zip(decays, decays[1:]))


def test_learning_rate_warms_up_then_stays_or_decays_on_a_cosine(cache, tmp_path):
    from opensora_mlops.training.trainer import lr_at

    assert [lr_at(s, 1e-3, 4) for s in (0, 1, 3, 500)] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-3])
    cosine = [lr_at(s, 1e-3, 4, 104, "cosine", 0.1) for s in range(104)]
    assert cosine[0] == pytest.approx(2.5e-4)  # warm-up first; the decay starts after it
    assert cosine[3] == pytest.approx(1e-3)  # the end of the warm-up is the peak
    assert cosine[14] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 100))))
    assert cosine[54] == pytest.approx(1e-3 * 0.55)  # half way: the mean of the two ends
    assert lr_at(104, 1e-3, 4, 104, "cosine", 0.1) == pytest.approx(1e-4)  # ends at lr_final x lr
    assert all(b <= a for a, b in zip(cosine[4:], cosine[5:]))
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_train_config({**tiny.train_config(tmp_path / "r", cache["train_dir"]), "lr_schedule": "step"})
    with pytest.raises(ConfigError, match="lr_final"):
        load_train_config({**tiny.train_config(tmp_path / "r", cache["train_dir"]), "lr_final": 2.0})
    events = []
    launch({**tiny.train_config(tmp_path / "run", cache["train_dir"], max_steps=6), "warmup_steps": 0,
            "lr_schedule": "cosine", "lr_final": 0.0},
           callback=lambda kind, payload: events.append((kind, payload)), progress=False)
    rates = [p["lr"] for k, p in events if k == "metrics"]
    assert rates == pytest.approx([lr_at(s, rates[0], 0, 6, "cosine", 0.0) for s in range(6)])
    assert rates[0] > rates[3] > rates[5] > 0


def test_resume_after_stop_continues_the_same_trajectory(cache, reference, tmp_path):
    ref_run, straight = reference
    first = launch(tiny.train_config(tmp_path / "b", cache["train_dir"], max_steps=2), progress=False)
    assert first.steps == 2
    second = launch(tiny.train_config(tmp_path / "b", cache["train_dir"], max_steps=REFERENCE_STEPS),
                    progress=False)
    assert second.resumed_from == 2 and second.steps == REFERENCE_STEPS
    assert second.samples_seen == straight.samples_seen
    a, b = _weights(ref_run), _weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    assert second.last_loss == pytest.approx(straight.last_loss, rel=1e-5)
    # the same command once more: nothing to train, and the final weights stay untouched (so a later
    # stage that starts from them does not restart)
    weights_file = tmp_path / "b" / "final" / "model" / "model.safetensors"
    written = weights_file.stat().st_mtime_ns
    again = launch(tiny.train_config(tmp_path / "b", cache["train_dir"], max_steps=REFERENCE_STEPS),
                   progress=False)
    assert again.resumed_from == REFERENCE_STEPS and again.steps == REFERENCE_STEPS
    assert weights_file.stat().st_mtime_ns == written
    # another configuration in the same folder starts over instead of resuming someone else's run
    changed = launch(tiny.train_config(tmp_path / "b", cache["train_dir"], max_steps=REFERENCE_STEPS, lr=5e-4),
                     progress=False)
    assert changed.resumed_from is None
    assert "restart" in [e["event"] for e in _events(tmp_path / "b")]


@pytest.mark.slow
def test_kill_9_mid_stage_then_the_same_command_resumes_and_finishes(cache, reference, tmp_path):
    ref_run, _ = reference
    steps = REFERENCE_STEPS
    run = tmp_path / "killed"
    config = tmp_path / "stage.json"
    config.write_text(json.dumps(tiny.train_config(run, cache["train_dir"], max_steps=steps)))
    cmd = [sys.executable, "-m", "opensora_mlops.training.launch", "--config", str(config), "--threads", "2"]
    env = {**os.environ, "OPENSORA_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_checkpoint(run / "checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = read_state(latest_checkpoint(run / "checkpoints"))["step"]
    assert killed_at < steps, "the run finished before it could be killed"
    assert not (run / "final").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    events = _events(run)
    resumes = [e for e in events if e["event"] == "resume"]
    assert resumes and resumes[-1]["step"] >= killed_at
    state = json.loads((run / "final" / "train_state.json").read_text())
    assert state["steps"] == steps and state["resumed_from"] == resumes[-1]["step"]
    # the optimizer-step trajectory after the resume is the uninterrupted one
    final_losses = {e["step"]: e["loss"] for e in events if e["event"] == "metrics"}
    ref_losses = {e["step"]: e["loss"] for e in _events(ref_run) if e["event"] == "metrics"}
    for step in range(resumes[-1]["step"] + 1, steps + 1):
        assert final_losses[step] == pytest.approx(ref_losses[step], rel=1e-5)
    a, b = _weights(ref_run), _weights(run)
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


@pytest.mark.slow
def test_two_processes_with_gloo_share_the_work(cache, tmp_path):
    events = []
    result = launch(tiny.train_config(tmp_path / "ddp", cache["train_dir"], max_steps=3, world_size=2),
                    callback=lambda kind, payload: events.append((kind, payload)), progress=False)
    assert result.steps == 3
    assert result.samples_seen == 3 * 2 * 2  # steps x per-rank batch x ranks
    assert [p["step"] for k, p in events if k == "metrics"] == [1, 2, 3]
    start = next(p for k, p in events if k == "start")
    assert start["world_size"] == 2
    assert (tmp_path / "ddp" / "final" / "ema" / "model.safetensors").exists()


# ------------------------------------------------------------------ evidence of learning


@pytest.mark.slow
def test_validation_loss_falls_from_stage_to_stage(cache, reference, tmp_path):
    from opensora_mlops.models.stdit2 import STDiT2
    from opensora_mlops.training.trainer import build_stage_model

    ref_run, _ = reference  # stage 1: from scratch
    launch(tiny.train_config(tmp_path / "s2", cache["train_dir"], stage="stage2", max_steps=8, lr=1e-3,
                             init_from=str(ref_run)), progress=False)
    val = LatentCache(cache["val_dir"])
    torch.manual_seed(0)  # the seed the trainer initialises with (train_config's seed)
    start = build_stage_model(load_train_config(tiny.train_config(ref_run, cache["train_dir"])))
    losses = [validation_loss(m, val)["val_loss"] for m in (
        start, STDiT2.from_pretrained(ref_run / "final" / "model"),
        STDiT2.from_pretrained(tmp_path / "s2" / "final" / "model"))]
    assert losses[0] > losses[1] > losses[2], losses
    # fixed timesteps and noise: the measurement itself is deterministic
    assert validation_loss(start, val)["val_loss"] == losses[0]


def test_cache_keeps_the_fps_the_dataset_feeds_the_model_for_images(tmp_path):
    from PIL import Image

    from opensora_mlops.data.dataset import IMAGE_FPS

    clips = tiny.write_clips(tmp_path / "clips", count=1, frames=3, fps=12.0)
    image = tmp_path / "still.png"
    Image.new("RGB", (256, 144), (200, 30, 30)).save(image)
    still = {"path": str(image), "text": "a red frame", "num_frames": 1, "height": 144, "width": 256,
             "aspect_ratio": 144 / 256, "fps": float("nan"), "resolution": 144 * 256, "duration": 0.0}
    table = tiny.bucket_table(pd.concat([clips, pd.DataFrame([still])], ignore_index=True), num_frames=1,
                              batch_size=1)
    manifest = tiny.build_cache(table, tmp_path / "cache", holdout_fraction=0.0, reuse_key={"vae": "tiny"})
    index = LatentCache(manifest["train_dir"]).index.set_index("path")["fps"]
    assert index[str(image)] == IMAGE_FPS  # the table says NaN: a still has no frame rate of its own
    assert not index.isna().any()
    # the same table and encoders: the cache is reused, not encoded again; other encoders: rebuilt
    tensors = Path(manifest["train_dir"]) / "tensors.safetensors"
    written = tensors.stat().st_mtime_ns
    assert tiny.build_cache(table, tmp_path / "cache", holdout_fraction=0.0, reuse_key={"vae": "tiny"}) == manifest
    assert tensors.stat().st_mtime_ns == written
    tiny.build_cache(table, tmp_path / "cache", holdout_fraction=0.0, reuse_key={"vae": "other"})
    assert tensors.stat().st_mtime_ns != written


def test_cpu_bf16_autocast_uses_the_math_attention_kernel_and_fp32_changes_nothing():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from opensora_mlops.training.booster import autocast

    cpu = torch.device("cpu")
    q, k, v = (torch.randn(2, 3, 16, 8, requires_grad=True) for _ in range(3))
    reference = sdpa(q, k, v)
    with autocast("torch_ddp", "bf16", cpu):
        # the flags the CPU kernel choice reads: flash off, math on, while the step's forward runs
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        out = sdpa(q, k, v)
    assert out.dtype == torch.bfloat16 and torch.backends.cuda.flash_sdp_enabled()  # restored after
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    assert (out.float() - reference).abs().max() < 3e-2
    with autocast("torch_ddp", "fp32", cpu):
        assert torch.backends.cuda.flash_sdp_enabled() and sdpa(q, k, v).dtype == torch.float32
