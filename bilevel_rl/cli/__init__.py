"""The ``bilevel-rl`` command.

Sub-commands: ``run`` (an algorithm on a batch of a problem suite; no options =
the main job), ``solve`` (batch-solve soft MDPs), ``deep`` (online RLHF on a gymnax
environment), ``config --example``, ``list``, ``bench``. Bad input exits with
status 2 and one line naming the problem.
"""

from __future__ import annotations

import argparse
import sys

from bilevel_rl import __version__
from bilevel_rl.cli import catalog, deep, run, solve
from bilevel_rl.cli.common import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit status 2) instead of the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bilevel-rl",
        description="Batched soft MDP solvers and bilevel RL algorithms in JAX.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run.add_parser(sub)
    solve.add_parser(sub)
    deep.add_parser(sub)
    catalog.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bilevel-rl`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"bilevel-rl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bilevel-rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
