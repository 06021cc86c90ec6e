"""The ``opensora-mlops`` command (also ``python -m opensora_mlops``)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Open-Sora 1.1 text-to-video, trained and run as pipelines.

commands:
  generate   make videos or images from text, reference images or videos with a trained model
  demo       run every pipeline on the bundled synthetic corpus and print where the results are

Run `opensora-mlops <command> --help` for a command's options."""

GENERATE_EXAMPLES = """\
examples:
  text to video (the model `make demo` exported, 144p landscape):
    opensora-mlops generate --prompt "a red circle moving left quickly on a gray background"
  portrait, 8 frames, 50 steps:
    opensora-mlops generate --prompt "a blue square moving up" --resolution 240p --aspect-ratio 9:16 \\
        --num-frames 8 --steps 50
  image to video:
    opensora-mlops generate --prompt "a yellow triangle moving right" --reference first.png --mask-strategy 0
  a released Open-Sora 1.1 checkpoint:
    opensora-mlops generate --checkpoint OpenSora-STDiT-v2-stage3 --model-name STDiT2-XL/2 --legacy \\
        --vae /models/sd-vae-ft-ema --text-encoder '{"type": "t5", "from_pretrained": "/models/t5-v1_1-xxl"}' \\
        --frame-interval 3 --prompt "a beach at sunset" """

DEMO_DESCRIPTION = """\
Run the whole default pipeline (ingestion, curation, bucketing, autoencoder, training stages 1-3,
evaluation, export) on the bundled synthetic corpus, record it in dvc.lock, and print where the report,
the sample videos and the exported model are. It takes minutes on a CPU."""


def build_parser() -> argparse.ArgumentParser:
    from opensora_mlops.inference.generate import add_generate_arguments

    parser = argparse.ArgumentParser(prog="opensora-mlops", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,demo}")
    add_generate_arguments(sub.add_parser(
        "generate", help="make videos or images with a trained model",
        description="Make videos or images from text prompts, optionally conditioned on reference images "
                    "or videos, with a trained model.",
        epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))
    demo = sub.add_parser("demo", help="run every pipeline on the bundled synthetic corpus",
                          description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--project-path", default=".",
                      help="the project folder, with pyproject.toml and conf/ (default: the current folder)")
    demo.add_argument("--env", default=None,
                      help="configuration environment under conf/, e.g. cluster (default: local, on top of base)")
    demo.add_argument("--seed", type=int, default=None,
                      help="training seed: initialisation, data order and noise of stages 1-3, as "
                           "`--params training_shared.seed=N` (default: the configured training_shared.seed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from opensora_mlops.errors import expected_error, want_traceback

    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from opensora_mlops.inference.generate import finish_generate_arguments, run_generate

            for written in run_generate(finish_generate_arguments(args)):
                print("  ".join(f"{kind}: {path}" for kind, path in written.items()))
        elif args.command == "demo":
            from opensora_mlops.pipelines.demo import run_demo

            print(run_demo(args.project_path, env=args.env, seed=args.seed))
    except Exception as error:
        # an input or settings problem (opensora_mlops.errors) is one message; a bug keeps its traceback
        user_error = error if isinstance(error, FileNotFoundError) else expected_error(error)
        if user_error is None or want_traceback():
            raise
        print(f"opensora-mlops {args.command}: error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
