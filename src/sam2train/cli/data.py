"""`sam2train demo-data`, `check-data` and `inspect-data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from sam2train.cli.common import add_config_args
from sam2train.config import load_config


def add_parsers(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo-data", help="write the synthetic demo dataset (DAVIS layout)")
    demo.add_argument("out", type=Path)
    demo.add_argument("--videos", type=int, default=8)
    demo.add_argument("--frames", type=int, default=24)
    demo.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    demo.add_argument("--objects", type=int, default=3)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo_data)

    _add_check_parser(sub)

    insp = sub.add_parser("inspect-data", help="dataset statistics and a PNG sheet of one sampled clip")
    add_config_args(insp)
    insp.add_argument("--out", type=Path, default=Path("inspect.png"), help="where to write the PNG sheet")
    insp.add_argument("--split", choices=("train", "val"), default="train")
    insp.set_defaults(run=cmd_inspect_data)


def cmd_demo_data(args: argparse.Namespace) -> int:
    import time

    from sam2train.data.demo import write_demo_dataset

    start = time.time()
    summary = write_demo_dataset(
        args.out,
        videos=args.videos,
        frames=args.frames,
        size=tuple(args.size),
        objects=args.objects,
        seed=args.seed,
    )
    print(
        f"demo dataset written to {args.out} in {time.time() - start:.1f} s: "
        f"{len(summary['train_videos'])} train and {len(summary['val_videos'])} val videos of {summary['frames']} "
        f"frames, {summary['objects']} objects, {summary['size'][0]}x{summary['size'][1]} px "
        f"({summary['train']}, {summary['val']})"
    )
    return 0


def cmd_inspect_data(args: argparse.Namespace) -> int:
    from sam2train.data.preview import inspect_dataset

    cfg = load_config(args.config, args.overrides)
    report = inspect_dataset(cfg, args.out, train=args.split == "train")
    print(report)
    print(f"sheet written to {args.out}")
    return 0


def _add_check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-data", help="scan every video of the configured data and list every problem with its file"
    )
    add_config_args(p)
    p.add_argument(
        "--split", choices=("train", "val", "both"), default="both", help="which data (default both)"
    )
    p.add_argument(
        "--fast", action="store_true", help="headers only: no full decode of frames and RLE (what fit checks)"
    )
    p.set_defaults(run=cmd_check_data)


def cmd_check_data(args: argparse.Namespace) -> int:
    """Print the report; 1 when it holds errors, else 0."""
    from sam2train.data.check import ERROR, format_report, run_checks
    from sam2train.data.sources.base import configured_sources
    from sam2train.errors import ConfigError

    cfg = load_config(args.config, args.overrides)
    splits = ("train", "val") if args.split == "both" else (args.split,)
    unset = [f"data.{s}_path" for s in splits if not configured_sources(cfg, s == "train")]
    if len(unset) == len(splits):
        raise ConfigError(f"config key '{unset[0]}' is not set: nothing to check")
    report = run_checks(cfg, splits, args.fast)
    report.scanned += [f"{key} is not set: not checked" for key in unset]
    print(format_report(report))
    return 1 if report.count(ERROR) else 0


# ------------------------------------------------------------------------------------------------- one source
