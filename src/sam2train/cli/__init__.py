"""The `sam2train` command: one module per command family (`train`: fit, validate; `data`: demo-data, check-data,
inspect-data; `evaluation`: evaluate, predict, export; `benchmark`: benchmark; `recipes`: recipes).

Every user error (config, data, checkpoint) is reported as one line naming the culprit and exit status 2; only
this package ever exits the process. Building the parser imports no torch, so `sam2train --help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from sam2train.cli import benchmark, data, evaluation, recipes, train
from sam2train.errors import UserError

EXIT_USER_ERROR = 2
FAMILIES = (train, data, evaluation, benchmark, recipes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2train", description="Fine-tune SAM 2 on your videos.")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not when the handler was made), so repeated
    in-process calls (tests, notebooks) whose stderr was swapped keep logging."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A Python warning as the CLI prints it: one line, without the source line that raised it."""
    return f"{category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    ours = logging.getLogger("sam2train")
    if not ours.handlers:
        ours.addHandler(_StderrHandler())
        ours.setLevel(logging.INFO)
        ours.propagate = False
    try:
        return args.run(args)
    except (UserError, FileNotFoundError, FileExistsError) as exc:
        # ConfigError, DataError, CheckpointError: one line naming the file or key, no traceback
        print(f"sam2train {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sam2train {args.command}: interrupted", file=sys.stderr)
        return 130
