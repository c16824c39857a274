"""`sam2train fit` and `sam2train validate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sam2train.cli.common import add_config_args
from sam2train.config import load_config, to_yaml
from sam2train.errors import ConfigError, DataError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser("fit", help="train (and validate every epoch)")
    add_config_args(fit)
    fit.add_argument("--ckpt", help="resume: 'last' (the run's last.ckpt) or a checkpoint path")
    fit.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    fit.set_defaults(run=cmd_fit)

    val = sub.add_parser("validate", help="run validation of a checkpoint")
    add_config_args(val)
    val.add_argument("--ckpt", required=True, help="Lightning checkpoint to validate")
    val.set_defaults(run=cmd_validate)


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
