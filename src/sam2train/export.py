"""`sam2train export` (being written)."""

import argparse


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("export", help="(not yet available)")


def cmd_export(args: argparse.Namespace) -> int:
    raise NotImplementedError
