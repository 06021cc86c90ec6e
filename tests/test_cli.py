"""The ``opensora-mlops`` command line as a user meets it: help that explains every option and its
default, and ``--aspect-ratio`` in the W:H convention of video tools (16:9 is landscape)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from opensora_mlops.__main__ import build_parser, main
from opensora_mlops.inference.generate import (
    DEFAULT_MODEL_DIR,
    cli_aspect_ratio,
    finish_generate_arguments,
)
from opensora_mlops.inference.sampling import resolve_size


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_every_option_says_what_it_does_and_its_default(command):
    parser = _subparsers(build_parser())[command]
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no help"
        assert "(default: " in action.help, f"{action.option_strings} does not state its default"


def test_help_speaks_to_users():
    done = subprocess.run([sys.executable, "-m", "opensora_mlops", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    text = done.stdout
    assert "generate" in text and "demo" in text
    # no notes for the project's developers, no reStructuredText markup
    for leak in ("cli.py", "Kedro reserves", "``", "kept out of"):
        assert leak not in text
    generate_help = _subparsers(build_parser())["generate"].format_help()
    assert "16:9 is landscape" in generate_help and "examples:" in generate_help
    assert "qk_norm_legacy" not in generate_help  # internal flag names


@pytest.mark.parametrize(("text", "height_over_width"), [
    ("16:9", 9 / 16), ("9:16", 16 / 9), ("1:1", 1.0), ("4:3", 0.75), ("2.39:1", 1 / 2.39),
    ("0.5625", 0.5625), ("1.7778", 1.7778),
])
def test_aspect_ratio_is_width_to_height_or_a_height_over_width_number(text, height_over_width):
    assert cli_aspect_ratio(text) == pytest.approx(height_over_width)


@pytest.mark.parametrize("text", ["wide", "16:0", "0:9", "-1", "0", "16:9:1", "nan", "inf", ""])
def test_bad_aspect_ratios_are_refused_with_the_convention(text, capsys):
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["generate", "--prompt", "x", "--aspect-ratio", text])
    assert stopped.value.code == 2
    assert "--aspect-ratio" in capsys.readouterr().err


def test_sixteen_by_nine_is_landscape_at_every_resolution():
    for resolution in ("144p", "240p", "360p"):
        args = build_parser().parse_args(["generate", "--prompt", "x", "--resolution", resolution,
                                          "--aspect-ratio", "16:9"])
        size = resolve_size(resolution=args.resolution, aspect_ratio=args.aspect_ratio)
        assert size.width > size.height, (resolution, size)
        portrait = build_parser().parse_args(["generate", "--prompt", "x", "--resolution", resolution,
                                              "--aspect-ratio", "9:16"])
        flipped = resolve_size(resolution=portrait.resolution, aspect_ratio=portrait.aspect_ratio)
        assert (flipped.height, flipped.width) == (size.width, size.height)


def test_defaults_that_depend_on_other_options():
    plain = finish_generate_arguments(build_parser().parse_args(["generate", "--prompt", "x"]))
    assert plain.model_dir == DEFAULT_MODEL_DIR
    size = resolve_size(plain.height, plain.width, plain.resolution, plain.aspect_ratio)
    assert (size.height, size.width) == (144, 256)  # 144p landscape, what the embedded model trains on
    explicit = finish_generate_arguments(build_parser().parse_args(
        ["generate", "--prompt", "x", "--height", "64", "--width", "48", "--model", "weights"]))
    assert (explicit.resolution, explicit.aspect_ratio, explicit.model_dir) == (None, None, None)
    assert resolve_size(explicit.height, explicit.width, explicit.resolution, explicit.aspect_ratio).height == 64


def test_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["generate", "--prompt", "x", "--model-dir", str(tmp_path / "nowhere"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"opensora-mlops generate: error: .*nowhere", err)


def test_demo_seed_reaches_the_training_parameters():
    """`demo --seed N` is `--params training_shared.seed=N`: the Kedro context the demo creates sees it,
    and everything else in training_shared keeps its configured value."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    args = build_parser().parse_args(["demo", "--seed", "3"])
    assert args.seed == 3 and build_parser().parse_args(["demo"]).seed is None
    project = Path(__file__).resolve().parents[1]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params={"training_shared": {"seed": args.seed}}) as s:
        params = s.load_context().params
    assert params["training_shared"]["seed"] == 3
    assert params["training_shared"]["scheduler"]["prediction"] == "v"
