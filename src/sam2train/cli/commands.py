"""The `sam2train` command: fit, validate, evaluate, demo-data, inspect-data.

Every user error (config, data, checkpoint) is reported as one line naming the culprit and exit status 2; only
this module ever exits the process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sam2train.config import load_config, to_yaml
from sam2train.errors import ConfigError, UserError

EXIT_USER_ERROR = 2


def _config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML config (may name a `base:` to extend)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optimizer.lr=3e-5"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam2train", description="Fine-tune SAM 2 on your videos.")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train (and validate every epoch)")
    _config_args(fit)
    fit.add_argument("--ckpt", help="resume: 'last' (the run's last.ckpt) or a checkpoint path")
    fit.add_argument("--print-config", action="store_true", help="print the resolved config and exit")

    val = sub.add_parser("validate", help="run validation of a checkpoint")
    _config_args(val)
    val.add_argument("--ckpt", required=True, help="Lightning checkpoint to validate")

    demo = sub.add_parser("demo-data", help="write the synthetic demo dataset (DAVIS layout)")
    demo.add_argument("out", type=Path)
    demo.add_argument("--videos", type=int, default=8)
    demo.add_argument("--frames", type=int, default=24)
    demo.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    demo.add_argument("--objects", type=int, default=3)
    demo.add_argument("--seed", type=int, default=0)

    from sam2train.data.check import add_check_parser
    from sam2train.eval.export import add_export_parser
    from sam2train.eval.predict import add_predict_parser

    add_predict_parser(sub)
    add_export_parser(sub)
    add_check_parser(sub)

    ev = sub.add_parser("evaluate", help="score predicted masks against ground truth (DAVIS J, F, J&F)")
    ev.add_argument("--pred", type=Path, required=True, help="predictions: <pred>/<sequence>/<frame>.png")
    ev.add_argument("--gt", type=Path, required=True, help="ground truth: a DAVIS root or a sequences folder")
    ev.add_argument("--out", type=Path, help="write the scores as JSON")

    insp = sub.add_parser("inspect-data", help="dataset statistics and a PNG sheet of one sampled clip")
    _config_args(insp)
    insp.add_argument("--out", type=Path, default=Path("inspect.png"), help="where to write the PNG sheet")
    insp.add_argument("--split", choices=("train", "val"), default="train")
    return parser


def _last_checkpoint(cfg) -> str:
    """The newest `last.ckpt` under the run name's folder."""
    base = Path(cfg.logging.root_dir) / cfg.logging.name
    found = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"--ckpt last: no last.ckpt under {base}/*/checkpoints")
    return str(found[-1])


def cmd_fit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    import shlex
    import signal

    import lightning as L

    from sam2train.data.datamodule import SAM2LightningDataModule
    from sam2train.train.callbacks import SaveOnInterrupt, stop_signals
    from sam2train.train.module import SAM2LightningModule
    from sam2train.train.trainer import make_trainer

    with stop_signals() as stop:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        ckpt = _last_checkpoint(cfg) if args.ckpt == "last" else args.ckpt
        if ckpt is not None and not Path(ckpt).is_file():
            raise FileNotFoundError(f"--ckpt: checkpoint file not found: {ckpt}")
        _check_data_fast(cfg)
        datamodule = SAM2LightningDataModule(cfg)
        datamodule.setup("fit")  # every source is opened and checked here, before the model is built
        module = SAM2LightningModule(cfg)
        trainer = make_trainer(cfg)
        saver = next(c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt))
        try:
            if cfg.trainer.validate_first and datamodule.val_set is not None and ckpt is None:
                trainer.validate(module, datamodule=datamodule, verbose=False)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
        except BaseException:
            # Lightning ends a run stopped by SIGTERM (or our first Ctrl-C) with SIGTERMException, and one
            # stopped by KeyboardInterrupt with sys.exit(1), after SaveOnInterrupt has run
            if not saver.interrupted:
                raise
            if trainer.is_global_zero:
                if saver.saved is not None:
                    resume = shlex.join(["sam2train", "fit", "--config", str(args.config), *args.overrides])
                    print(f"sam2train fit: stopped; saved {saver.saved}", file=sys.stderr)
                    print(f"resume with: {resume} --ckpt last", file=sys.stderr)
                else:
                    print("sam2train fit: stopped; no checkpoint written now", file=sys.stderr)
            return 128 + int(stop.signal or signal.SIGINT)
    if trainer.is_global_zero:
        _print_summary(module, cfg.checkpoint.monitor)
        print(f"run folder: {trainer.default_root_dir}")
    return 0


def _check_data_fast(cfg) -> None:
    """The fast part of `check-data` (headers, masks, schema, lengths; no full decode) before a fit: every error
    found stops the run listing each file; warnings are printed."""
    from sam2train.data.check import check_sources
    from sam2train.errors import DataError

    if not cfg.data.check_at_setup:
        return
    problems = check_sources(cfg, fast=True)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity == "warning":
            print(f"data warning: {p}", file=sys.stderr)
    if errors:
        listed = "\n  ".join(str(p) for p in errors)
        raise DataError(f"{len(errors)} data error(s) (sam2train check-data lists them all):\n  {listed}")


def _print_summary(module, monitor: str) -> None:
    """Where the validation loss and the monitored metric started, where they ended, and the best score."""
    history = module.val_history
    label = "before training" if module.config.trainer.validate_first else "after epoch 0"
    for key in dict.fromkeys(["val/total", monitor]):
        values = [h[key] for h in history if key in h]
        if values:
            print(f"{key}: {label} {values[0]:.4f}, after the last epoch {values[-1]:.4f}")
    if module.best_score is not None:
        print(f"best {monitor}: {module.best_score:.4f}")


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"--ckpt: checkpoint file not found: {args.ckpt}")
    from sam2train.data.datamodule import SAM2LightningDataModule
    from sam2train.train.module import SAM2LightningModule
    from sam2train.train.trainer import make_trainer

    datamodule = SAM2LightningDataModule(cfg)
    datamodule.setup("validate")
    if datamodule.val_set is None:
        raise ConfigError("config key 'data.val_path' is not set: nothing to validate")
    module = SAM2LightningModule(cfg)
    trainer = make_trainer(cfg)
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=args.ckpt)
    for key, value in sorted((results[0] if results else {}).items()):
        print(f"{key}: {value:.6f}")
    return 0


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


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from sam2train.eval.evaluate import evaluate_folders

    scores = evaluate_folders(args.pred, args.gt)
    print(f"{'sequence':<24}{'J&F':>8}{'J':>8}{'F':>8}")
    for seq, s in sorted(scores["per_sequence"].items()):
        print(f"{seq:<24}{s['J&F']:>8.4f}{s['J']:>8.4f}{s['F']:>8.4f}")
    print(f"{'overall':<24}{scores['J&F']:>8.4f}{scores['J']:>8.4f}{scores['F']:>8.4f}")
    print(
        f"J recall {scores['J_recall']:.4f}  F recall {scores['F_recall']:.4f}  "
        f"J decay {scores['J_decay']:.4f}  F decay {scores['F_decay']:.4f}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(scores, indent=2))
        print(f"scores written to {args.out}")
    return 0


COMMANDS = {
    "fit": cmd_fit,
    "validate": cmd_validate,
    "demo-data": cmd_demo_data,
    "inspect-data": cmd_inspect_data,
    "evaluate": cmd_evaluate,
    "predict": lambda args: _lazy("eval.predict", "cmd_predict")(args),
    "export": lambda args: _lazy("eval.export", "cmd_export")(args),
    "check-data": lambda args: _lazy("data.check", "cmd_check_data")(args),
}


def _lazy(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(f"sam2train.{module}"), name)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not when the handler was made), so repeated
    in-process calls (tests, notebooks) whose stderr was swapped keep logging."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ours = logging.getLogger("sam2train")
    if not ours.handlers:
        ours.addHandler(_StderrHandler())
        ours.setLevel(logging.INFO)
        ours.propagate = False
    try:
        return COMMANDS[args.command](args)
    except (UserError, FileNotFoundError, FileExistsError) as exc:
        # ConfigError, DataError, CheckpointError: one line naming the file or key, no traceback
        print(f"sam2train {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"sam2train {args.command}: interrupted", file=sys.stderr)
        return 130
