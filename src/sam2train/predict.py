"""`sam2train predict` (being written)."""

import argparse


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("predict", help="(not yet available)")


def cmd_predict(args: argparse.Namespace) -> int:
    raise NotImplementedError
