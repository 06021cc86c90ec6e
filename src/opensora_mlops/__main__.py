"""Command line (kept out of `cli.py`, which Kedro reserves for project commands).

``python -m opensora_mlops generate …`` (also the ``opensora-mlops`` console script) samples videos
from a trained model; ``python -m opensora_mlops demo`` runs the whole default pipeline on the
embedded synthetic corpus and prints where everything landed.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from opensora_mlops.inference.generate import add_generate_arguments

    parser = argparse.ArgumentParser(prog="opensora-mlops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_generate_arguments(sub.add_parser(
        "generate", help="text/image/video -> image/video with a trained STDiT2 (see --help)"))
    demo = sub.add_parser("demo", help="run the whole default pipeline on the embedded synthetic corpus")
    demo.add_argument("--project-path", default=".", help="Kedro project root (default: current directory)")
    demo.add_argument("--env", default=None, help="Kedro config environment (default: local over base)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from opensora_mlops.config import ConfigError
    from opensora_mlops.inference.generate import GenerationError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from opensora_mlops.inference.generate import run_generate

            for written in run_generate(args):
                print("  ".join(f"{kind}: {path}" for kind, path in written.items()))
        elif args.command == "demo":
            from opensora_mlops.pipelines.demo import run_demo

            print(run_demo(args.project_path, env=args.env))
    except (GenerationError, ConfigError, FileNotFoundError) as error:
        print(f"opensora-mlops {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
