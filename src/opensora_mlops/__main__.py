"""Command line (kept out of `cli.py`, which Kedro reserves for project commands): ``python -m opensora_mlops <command>`` (also the ``opensora-mlops`` script)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensora-mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the main job on the embedded default")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from opensora_mlops.demo import run_demo

        run_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
