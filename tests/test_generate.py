"""generate(): every inference mode with an untrained tiny STDiT2 + tiny VAE + MiniLM (outputs are noise;
shapes, conditioning, files and validation are what is checked)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from opensora_mlops.config import ConfigError
from opensora_mlops.data.video_io import read_video, write_video
from opensora_mlops.diffusion import IDDPM
from opensora_mlops.inference.generate import (
    add_generate_arguments,
    generate,
    load_components,
    run_generate,
    save_generation,
)
from opensora_mlops.inference.sampling import (
    GenerationError,
    frames_to_video_tensor,
    parse_aspect_ratio,
    resolve_size,
)
from opensora_mlops.models.stdit2 import build_model
from opensora_mlops.models.text_encoder import MiniLMTextEncoder
from opensora_mlops.models.vae import VideoAutoencoder

H, W = 32, 32


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = build_model("STDiT2-tiny").eval()
    vae = VideoAutoencoder.tiny(seed=0)
    encoder = MiniLMTextEncoder(max_length=model.config.model_max_length)
    scheduler = IDDPM(timestep_respacing="2", cfg_scale=4.0)
    return model, vae, encoder, scheduler


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two still images (not the target size: resized and cropped) and an 8-frame video."""
    root = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    a = np.zeros((40, 56, 3), np.uint8)
    a[5:30, 10:40] = (230, 30, 30)
    b = np.full((24, 24, 3), 40, np.uint8)
    b[4:20, 4:12] = (20, 200, 60)
    Image.fromarray(a).save(root / "a.png")
    Image.fromarray(b).save(root / "b.png")
    clip = np.zeros((8, H, W, 3), np.uint8)
    for t in range(8):
        clip[t, 8:20, 2 + 3 * t : 12 + 3 * t] = (30, 60, 220)
    clip += rng.integers(0, 20, clip.shape, dtype=np.uint8)
    write_video(root / "clip.mp4", clip, fps=8)
    return {"a": root / "a.png", "b": root / "b.png", "clip": root / "clip.mp4"}


def run(parts, **kwargs):
    model, vae, encoder, scheduler = parts
    defaults = {"height": H, "width": W, "num_frames": 4, "seed": 1, "progress": False}
    return generate(model, vae, encoder, scheduler, **{**defaults, **kwargs})


def count_forwards(model) -> tuple[list[int], object]:
    calls = [0]
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


# ---- modes ---------------------------------------------------------------------------------------


def test_text_to_image_writes_png_and_sidecar(parts, tmp_path: Path) -> None:
    result = run(parts, prompts="a red square on black", num_frames=1)
    assert result.videos[0].shape == (1, H, W, 3) and result.videos[0].dtype == np.uint8
    assert result.latents[0].shape == (4, 1, H // 8, W // 8)
    files = save_generation(result, tmp_path, name="img")
    assert Path(files[0]["image"]).name == "img_0000.png"
    assert np.array_equal(np.asarray(Image.open(files[0]["image"])), result.videos[0][0])
    sidecar = json.loads(Path(files[0]["settings"]).read_text())
    for key, value in {"prompt": "a red square on black", "seed": 1, "steps": 2, "cfg_scale": 4.0, "height": H,
                       "width": W, "num_frames": 1, "total_frames": 1, "loops": 1}.items():
        assert sidecar[key] == value, key
    # same request, same result; another seed, another result
    again = run(parts, prompts="a red square on black", num_frames=1)
    assert torch.equal(again.latents[0], result.latents[0])
    other = run(parts, prompts="a red square on black", num_frames=1, seed=2)
    assert not torch.equal(other.latents[0], result.latents[0])


def test_text_to_video_batch_writes_mp4_gif_json(parts, tmp_path: Path) -> None:
    prompts = ["a red square moves right", "a green disc"]
    result = run(parts, prompts=prompts, num_frames=5, fps=12)
    assert [v.shape for v in result.videos] == [(5, H, W, 3)] * 2
    files = save_generation(result, tmp_path)
    for i, entry in enumerate(files):
        frames, fps = read_video(entry["video"])
        assert frames.shape == (5, H, W, 3) and fps == pytest.approx(12)
        assert Path(entry["gif"]).is_file()
        sidecar = json.loads(Path(entry["settings"]).read_text())
        assert sidecar["prompt"] == prompts[i] and sidecar["fps"] == 12
        assert sidecar["files"]["video"] == entry["video"]


def test_micro_conditions_and_frame_interval(parts, tmp_path: Path) -> None:
    model = parts[0]
    seen: list[dict] = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw), with_kwargs=True)
    try:
        image = run(parts, prompts="a ball", num_frames=1, height=24, width=40, fps=30)
        video = run(parts, prompts="a ball", num_frames=3, height=24, width=40, fps=24, frame_interval=3)
    finally:
        handle.remove()
    first_image, first_video = seen[0], seen[-1]
    # batch doubled for guidance; conditions are H, W in pixels, ar = H/W, num_frames of the clip
    assert first_image["fps"].tolist() == [120.0, 120.0]  # images are conditioned as in training
    assert first_video["fps"].tolist() == [24.0, 24.0]
    assert first_video["height"].tolist() == [24.0] * 2 and first_video["width"].tolist() == [40.0] * 2
    assert first_video["ar"].tolist() == pytest.approx([0.6, 0.6])
    assert first_video["num_frames"].tolist() == [3.0, 3.0]
    assert image.settings[0]["fps_condition"] == 120.0
    assert video.settings[0]["output_fps"] == 8.0
    _, fps = read_video(save_generation(video, tmp_path)[0]["video"])
    assert fps == pytest.approx(8.0)


def test_odd_size_is_padded_then_cropped(parts) -> None:
    result = run(parts, prompts="a ball", height=20, width=28, num_frames=2)
    assert result.videos[0].shape == (2, 20, 28, 3)
    assert result.latents[0].shape == (4, 2, 3, 4)


def test_image_to_video_keeps_reference_latent(parts, refs) -> None:
    model, vae, _, _ = parts
    result = run(parts, prompts="a red square", reference_paths=str(refs["a"]), mask_strategy="0")
    ref_latent = result.reference_latents[0][0]
    assert ref_latent.shape == (4, 1, H // 8, W // 8)
    # the reference was resized to cover 32x32 and centre-cropped before encoding
    expected = vae.encode(frames_to_video_tensor(np.asarray(Image.open(refs["a"]))[None], H, W)[None])[0]
    torch.testing.assert_close(ref_latent, expected)
    assert torch.equal(result.latents[0][:, 0], ref_latent[:, 0])
    assert not torch.allclose(result.latents[0][:, 1], ref_latent[:, 0])
    assert result.settings[0]["applied_mask_strategy"] == "0,0,0,0,1,0"


def test_connect_two_images(parts, refs) -> None:
    result = run(parts, prompts="from red to green", reference_paths=f"{refs['a']};{refs['b']}",
                 mask_strategy="0;0,1,0,-1,1")
    latents, (first, last) = result.latents[0], result.reference_latents[0]
    assert torch.equal(latents[:, 0], first[:, 0])
    assert torch.equal(latents[:, -1], last[:, 0])
    assert result.videos[0].shape == (4, H, W, 3)


def test_video_extension_and_per_prompt_settings(parts, refs) -> None:
    result = run(parts, prompts=["extend the clip", "a free one"], num_frames=5,
                 reference_paths=[str(refs["clip"]), None], mask_strategy=["0,0,0,0,3", None])
    clip_latents = result.reference_latents[0][0]
    assert clip_latents.shape[1] == 8
    assert torch.equal(result.latents[0][:, :3], clip_latents[:, :3])
    # only the 3 frames the strategy uses were encoded; they equal encoding the whole clip
    vae = parts[1]
    frames, _ = read_video(refs["clip"])
    whole = vae.encode(frames_to_video_tensor(frames, H, W)[None])[0]
    torch.testing.assert_close(clip_latents[:, :3], whole[:, :3])
    assert clip_latents[:, 3:].abs().max() == 0
    assert result.reference_latents[1] == []
    assert result.settings[0]["reference_frames"] == [8] and result.settings[1]["reference_paths"] == []


def test_video_editing_with_edit_ratio(parts, refs) -> None:
    kept = run(parts, prompts="same clip", reference_paths=str(refs["clip"]), mask_strategy="0,0,0,0,4,0")
    torch.testing.assert_close(kept.latents[0], kept.reference_latents[0][0][:, :4], rtol=0, atol=0)
    edited = run(parts, prompts="a different colour", reference_paths=str(refs["clip"]),
                 mask_strategy="0,0,0,0,4,0.5")
    assert edited.videos[0].shape == (4, H, W, 3)
    assert not torch.allclose(edited.latents[0], edited.reference_latents[0][0][:, :4])
    assert edited.settings[0]["mask_strategy"] == "0,0,0,0,4,0.5"


def test_long_video_by_loops(parts) -> None:
    result = run(parts, prompts="|0|a red square|2|a blue disc", num_frames=4, loops=3, condition_frames=2)
    assert result.videos[0].shape == (3 * 4 - 2 * 2, H, W, 3)
    loops = result.loop_latents[0]
    assert len(loops) == 3
    for previous, current in zip(loops, loops[1:], strict=False):
        assert torch.equal(current[:, :2], previous[:, -2:])  # each loop starts from the last frames
    torch.testing.assert_close(result.latents[0], torch.cat([loops[0], loops[1][:, 2:], loops[2][:, 2:]], dim=1))
    settings = result.settings[0]
    assert settings["loop_prompts"] == ["a red square", "a red square", "a blue disc"]
    assert settings["total_frames"] == 8
    assert settings["applied_mask_strategy"] == "1,0,-2,0,2,0;2,1,-2,0,2,0"


def test_loops_with_a_reference(parts, refs) -> None:
    result = run(parts, prompts="start from an image", reference_paths=str(refs["a"]), mask_strategy="0",
                 num_frames=3, loops=2, condition_frames=1)
    assert result.videos[0].shape == (5, H, W, 3)
    assert torch.equal(result.latents[0][:, 0], result.reference_latents[0][0][:, 0])
    assert result.settings[0]["applied_mask_strategy"] == "0,0,0,0,1,0;1,1,-1,0,1,0"


def test_resolution_and_aspect_ratio_tables() -> None:
    assert resolve_size(resolution="144p", aspect_ratio="9:16").__dict__ == {
        "height": 144, "width": 256, "resolution": "144p", "aspect_ratio": "0.56"}
    assert (resolve_size(resolution="240p", aspect_ratio="16:9").height,
            resolve_size(resolution="240p", aspect_ratio="16:9").width) == (426, 240)
    assert resolve_size(resolution="256").aspect_ratio == "1.0"
    assert parse_aspect_ratio("0.75") == 0.75 and parse_aspect_ratio("3:4") == 0.75
    with pytest.raises(ConfigError, match="1080x"):
        resolve_size(resolution="1080x")
    with pytest.raises(GenerationError, match="aspect ratio"):
        resolve_size(resolution="240p", aspect_ratio="wide")
    with pytest.raises(GenerationError, match="not both"):
        resolve_size(height=32, width=32, resolution="240p")
    with pytest.raises(GenerationError, match="too small"):
        resolve_size(height=4, width=32)


# ---- validation before compute -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reference_paths": "/no/such/ref.png", "mask_strategy": "0"}, FileNotFoundError, "ref.png"),
        ({"reference_paths": "A", "mask_strategy": "0,1,0,0,1"}, GenerationError, "ref_id 1"),
        ({"reference_paths": "CLIP", "mask_strategy": "0,0,0,3,2"}, GenerationError, "outside the clip"),
        ({"reference_paths": "CLIP", "mask_strategy": "0,0,-2,0,3"}, GenerationError, "clip.mp4 \\(8 frames\\)"),
        ({"reference_paths": "A", "mask_strategy": "0,0,0,0,2"}, GenerationError, "a.png"),
        ({"mask_strategy": "0"}, GenerationError, "0 reference"),
        ({"reference_paths": "A", "mask_strategy": "1,0,0,0,1"}, GenerationError, "only 1 loop"),
        ({"mask_strategy": "0,x"}, GenerationError, "ref_id must be an integer"),
        ({"resolution": "999p", "height": None, "width": None}, ConfigError, "999p"),
        ({"height": 5}, GenerationError, "too small"),
        ({"loops": 2, "condition_frames": 4}, GenerationError, "condition_frames"),
        ({"prompts": "|0|a|3|b", "loops": 2, "condition_frames": 1}, GenerationError, r"loop\(s\) \[3\]"),
        ({"prompts": ["a", "b"], "mask_strategy": ["0"]}, GenerationError, "one per prompt"),
        ({"prompts": []}, GenerationError, "no prompts"),
        ({"fps": 0}, GenerationError, "fps"),
        ({"frame_interval": 0}, GenerationError, "frame_interval"),
    ],
)
def test_bad_requests_fail_before_the_model_runs(parts, refs, kwargs, error, match) -> None:
    named = {"A": str(refs["a"]), "CLIP": str(refs["clip"])}
    if kwargs.get("reference_paths") in named:
        kwargs = {**kwargs, "reference_paths": named[kwargs["reference_paths"]]}
    calls, handle = count_forwards(parts[0])
    try:
        with pytest.raises(error, match=match):
            run(parts, **{"prompts": "a ball", **kwargs})
    finally:
        handle.remove()
    assert calls[0] == 0


def test_component_mismatch_is_named(parts) -> None:
    model, vae, _, scheduler = parts
    short = MiniLMTextEncoder(max_length=16)
    with pytest.raises(GenerationError, match="model_max_length=32"):
        generate(model, vae, short, scheduler, "a", num_frames=1, height=H, width=W, progress=False)
    with pytest.raises(GenerationError, match="steps=5 disagrees"):
        generate(model, vae, parts[2], scheduler, "a", num_frames=1, height=H, width=W, steps=5, progress=False)


# ---- command line --------------------------------------------------------------------------------


def test_cli_from_exported_model_directory(parts, refs, tmp_path: Path) -> None:
    model, vae, _, _ = parts
    export = tmp_path / "export"
    model.save_pretrained(export / "model")
    vae.save_pretrained(export / "vae")
    (export / "text_encoder.json").write_text(json.dumps({"type": "minilm", "max_length": 32}))
    (export / "scheduler.json").write_text(json.dumps({"num_timesteps": 1000, "cfg_scale": 5.0}))
    parser = add_generate_arguments(argparse.ArgumentParser())
    out = tmp_path / "out"
    args = parser.parse_args([
        "--model-dir", str(export), "--prompt", "a red square", "--num-frames", "3", "--height", "24",
        "--width", "40", "--steps", "2", "--reference", str(refs["a"]), "--mask-strategy", "0",
        "--output-dir", str(out), "--quiet", "--vae-micro-batch-size", "2",
    ])
    written = run_generate(args)
    frames, _ = read_video(written[0]["video"])
    assert frames.shape == (3, 24, 40, 3)
    sidecar = json.loads(Path(written[0]["settings"]).read_text())
    assert sidecar["model"] == str(export / "model") and sidecar["vae"] == str(export / "vae")
    assert sidecar["steps"] == 2 and sidecar["cfg_scale"] == 5.0
    assert sidecar["text_encoder"] == {"type": "minilm", "max_length": 32}
    assert sidecar["reference_paths"] == [str(refs["a"])]

    bad = parser.parse_args(["--model-dir", str(export), "--prompt", "x", "--reference", str(tmp_path / "gone.mp4"),
                             "--mask-strategy", "0", "--height", "16", "--width", "16"])
    with pytest.raises(FileNotFoundError, match="gone.mp4"):
        run_generate(bad)
    missing = parser.parse_args(["--model-dir", str(tmp_path / "nowhere"), "--prompt", "x", "--height", "16",
                                 "--width", "16"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_generate(missing)


def test_bf16_components_sample_end_to_end_on_cpu(parts, refs, tmp_path: Path) -> None:
    """--dtype bf16 casts the denoiser and the VAE; text-to-video and image-to-video both run on CPU and
    give frames close to the fp32 ones for the same seed (this untrained model predicts zeros: the
    difference is mostly the bf16 VAE's)."""
    model, vae, _, _ = parts
    export = tmp_path / "export"
    model.save_pretrained(export / "model")
    vae.save_pretrained(export / "vae")
    (export / "text_encoder.json").write_text(json.dumps({"type": "minilm", "max_length": 32}))
    videos = {}
    for dtype in ("fp32", "bf16"):
        net, auto, encoder, scheduler, settings = load_components(export, dtype=dtype, steps=2)
        assert next(net.parameters()).dtype == next(auto.module.parameters()).dtype
        assert settings["dtype"] == dtype
        result = generate(net, auto, encoder, scheduler, ["a red square", "a blue circle"], num_frames=4,
                          height=H, width=W, seed=3, mask_strategy=[None, "0"], reference_paths=[None, refs["a"]],
                          progress=False)
        videos[dtype] = np.stack(result.videos).astype(np.float32)
    assert next(net.parameters()).dtype == torch.bfloat16
    assert videos["bf16"].shape == videos["fp32"].shape == (2, 4, H, W, 3)
    diff = np.abs(videos["bf16"] - videos["fp32"])
    assert diff.mean() < 1.0 and diff.max() <= 8  # measured: max 1 grey level, mean 0.14


def test_cli_checks_every_number_before_loading_anything(tmp_path: Path) -> None:
    """A nonexistent model directory would fail the load: these requests must fail first, on their own."""
    parser = add_generate_arguments(argparse.ArgumentParser())
    nowhere = str(tmp_path / "nowhere")
    base = ["--model-dir", nowhere, "--prompt", "x", "--height", "144", "--width", "256"]
    cases = [
        (["--num-frames", "10000"], "max-pixels"),
        (["--num-frames", "0"], "num_frames"),
        (["--steps", "1"], "steps"),
        (["--fps", "-25"], "fps"),
        (["--cfg-scale", "nan"], "cfg_scale"),
        (["--loops", "3", "--condition-frames", "16", "--num-frames", "16"], "condition_frames"),
        (["--batch-size", "0"], "batch_size"),
    ]
    for extra, match in cases:
        with pytest.raises(GenerationError, match=match):
            run_generate(parser.parse_args(base + extra))
    # the budget counts every loop's frames and can be raised (0 lifts it): then the load is what fails
    with pytest.raises(GenerationError, match="max-pixels"):
        run_generate(parser.parse_args(base + ["--num-frames", "100", "--loops", "20"]))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_generate(parser.parse_args(base + ["--num-frames", "10000", "--max-pixels", "0"]))


def test_size_budget_in_the_library_call(parts) -> None:
    with pytest.raises(GenerationError, match="max_pixels"):
        run(parts, prompts="a", num_frames=5, max_pixels=4 * H * W)
    assert run(parts, prompts="a", num_frames=4, max_pixels=4 * H * W).videos[0].shape[0] == 4


def test_corrupt_or_mismatched_weights_are_one_clear_error(parts, tmp_path: Path) -> None:
    model, vae, _, _ = parts
    export = tmp_path / "export"
    model.save_pretrained(export / "model")
    vae.save_pretrained(export / "vae")
    (export / "text_encoder.json").write_text(json.dumps({"type": "minilm", "max_length": 32}))
    weights = export / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(GenerationError, match=r"could not load the model from .*model"):
        load_components(model_dir=export)
    model.save_pretrained(export / "model")
    config = json.loads((export / "model" / "config.json").read_text())
    (export / "model" / "config.json").write_text(json.dumps({**config, "hidden_size": config["hidden_size"] * 2}))
    with pytest.raises(GenerationError, match="could not load the model"):
        load_components(model_dir=export)


def test_sidecar_records_the_size_the_file_holds(parts, tmp_path: Path) -> None:
    from opensora_mlops.data.video_io import read_video

    result = run(parts, prompts="a", num_frames=3, height=21, width=35)
    files = save_generation(result, tmp_path, gif=False)[0]
    frames, _ = read_video(files["video"])
    sidecar = json.loads(Path(files["settings"]).read_text())
    assert (sidecar["height"], sidecar["width"]) == (21, 35)  # what was asked and generated
    assert (sidecar["written_height"], sidecar["written_width"]) == frames.shape[1:3] == (22, 36)
