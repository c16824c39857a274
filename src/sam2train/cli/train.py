"""`sam2train fit` and `sam2train validate`."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from sam2train.cli.common import add_config_args
from sam2train.config import load_config, to_yaml
from sam2train.errors import ConfigError, DataError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fit = sub.add_parser("fit", help="train (and validate every epoch)")
    add_config_args(fit)
    fit.add_argument("--ckpt", help="resume: 'last' (the run's last.ckpt) or a checkpoint path")
    fit.add_argument(
        "--ckpt-weights-only",
        action="store_true",
        help="start a new run from the --ckpt file's weights (fresh optimizer, schedule and step count)",
    )
    _add_trust_arg(fit)
    fit.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    fit.set_defaults(run=cmd_fit)

    val = sub.add_parser(
        "validate",
        help="run validation of a checkpoint, with the model settings it was trained with "
        "(without --config: its whole stored config)",
    )
    add_config_args(val, required=False)
    val.add_argument("--ckpt", required=True, help="Lightning checkpoint to validate")
    _add_trust_arg(val)
    val.set_defaults(run=cmd_validate)


def _add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the --ckpt file in full even if the safe loader refuses it (it can run code): only for "
        "a file you made yourself (model.checkpoint has model.trust_checkpoint)",
    )


def _checked_ckpt(cfg, ckpt: str | None, args: argparse.Namespace):
    """(config, the checkpoint Lightning resumes from): the --ckpt file opened with the safe loader (an error
    naming it, not Lightning's stack trace); with --ckpt-weights-only it becomes model.checkpoint instead."""
    from dataclasses import replace

    from sam2train.errors import CheckpointError, UserError
    from sam2train.model.checkpoints import read_checkpoint
    from sam2train.train.versions import WEIGHTS_ONLY_HINT

    if ckpt is None:
        if getattr(args, "ckpt_weights_only", False):
            raise UserError("--ckpt-weights-only: give the checkpoint with --ckpt FILE")
        return cfg, None
    trust = args.trust_checkpoint
    if getattr(args, "ckpt_weights_only", False):
        model = replace(cfg.model, checkpoint=str(ckpt), trust_checkpoint=trust or cfg.model.trust_checkpoint)
        return replace(cfg, model=model), None
    contents = read_checkpoint(ckpt, "--ckpt", trust)
    if contents.kind != "lightning":
        raise CheckpointError(
            f"--ckpt {ckpt}: holds weights only ({contents.kind} format), not the Lightning checkpoint of a run; "
            f"{WEIGHTS_ONLY_HINT}"
        )
    return cfg, ckpt


def _last_checkpoint(cfg) -> str:
    """The `last.ckpt` of the run folder `logging.version` names, else the newest under the run name's folder."""
    base = Path(cfg.logging.root_dir) / cfg.logging.name
    own = base / str(cfg.logging.version) / "checkpoints" / "last.ckpt"
    if cfg.logging.version and own.is_file():
        return str(own)
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
        cfg, ckpt = _checked_ckpt(cfg, ckpt, args)
        cfg, resume = _plan_resume(cfg, ckpt, args.trust_checkpoint)
        checked = _check_data_fast(cfg)
        datamodule = SAM2LightningDataModule(cfg)
        with warnings.catch_warnings():
            if checked:  # the data check printed the readers' warnings: once is enough
                warnings.simplefilter("ignore")
            datamodule.setup("fit")  # every source is opened and checked here, before the model is built
        module = SAM2LightningModule(cfg)
        if ckpt is not None:  # the weights come from the checkpoint: model.checkpoint is not read
            module.build(load_weights=False)
        trainer = make_trainer(cfg, resume=resume)
        saver = next(c for c in trainer.callbacks if isinstance(c, SaveOnInterrupt))
        try:
            if cfg.trainer.validate_first and datamodule.val_set is not None and ckpt is None:
                trainer.validate(module, datamodule=datamodule, verbose=False)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=not args.trust_checkpoint)
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


def _plan_resume(cfg, ckpt: str | None, trust: bool):
    """(config, ResumePlan or None): a checkpoint of this run's folder continues there (`logging.version` set to
    it); one of another run starts a new version that records it. Says which on stderr."""
    from dataclasses import replace

    from sam2train.model.checkpoints import load_torch_file
    from sam2train.train.resume import plan_resume

    if ckpt is None:
        return cfg, None
    step = int(load_torch_file(Path(ckpt), f"--ckpt {ckpt}", trust).get("global_step", 0))
    log = cfg.logging
    plan = plan_resume(log.root_dir, log.name, log.version, ckpt, step)
    if plan.version is not None:
        cfg = replace(cfg, logging=replace(log, version=plan.version))
        print(f"sam2train fit: continuing run {plan.version} from step {step} ({ckpt})", file=sys.stderr)
    else:
        new = f"a new run from {plan.checkpoint} (step {step}), recorded in parent.json"
        print(f"sam2train fit: {new}", file=sys.stderr)
    return cfg, plan


def _check_data_fast(cfg) -> bool:
    """The fast part of `check-data` (headers, masks, schema, lengths; no full decode) before a fit: an error stops
    the run (one line; several: one line each); warnings are printed. False when `data.check_at_setup` is off."""
    from sam2train.data.check import check_sources

    if not cfg.data.check_at_setup:
        return False
    problems = check_sources(cfg, fast=True)
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity == "warning":
            print(f"data warning: {p}", file=sys.stderr)
    if len(errors) == 1:
        raise DataError(f"data error: {errors[0]} (sam2train check-data lists every problem)")
    if errors:
        listed = "\n  ".join(str(p) for p in errors)
        raise DataError(f"{len(errors)} data error(s) (sam2train check-data lists them all):\n  {listed}")
    return True


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


def _validation_config(args: argparse.Namespace):
    """The config `validate` runs with: `--config` and the overrides, whose model settings must be the checkpoint's
    (a key that differs is an error naming it, unless a command-line override sets it on purpose); without
    `--config`, the config stored in the checkpoint, with the overrides."""
    import tempfile

    from sam2train.model.checkpoints import read_checkpoint
    from sam2train.train.resume import check_model_settings

    stored = read_checkpoint(args.ckpt, "--ckpt", args.trust_checkpoint).config()
    if args.config is None:
        if stored is None:
            raise ConfigError(f"--ckpt {args.ckpt} holds no config: give the run's config with --config")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "checkpoint_config.yaml"
            path.write_text(to_yaml(stored))
            return load_config(path, args.overrides)
    cfg = load_config(args.config, args.overrides)
    if stored is not None:
        overridden = {item.split("=", 1)[0].strip() for item in args.overrides}
        check_model_settings(stored.model, cfg.model, f"--config {args.config}", overridden)
    return cfg


def cmd_validate(args: argparse.Namespace) -> int:
    if not Path(args.ckpt).is_file():
        raise FileNotFoundError(f"--ckpt: checkpoint file not found: {args.ckpt}")
    cfg = _validation_config(args)
    _checked_ckpt(cfg, args.ckpt, args)
    from sam2train.data.datamodule import SAM2LightningDataModule
    from sam2train.train.module import SAM2LightningModule
    from sam2train.train.trainer import make_trainer

    datamodule = SAM2LightningDataModule(cfg)
    datamodule.setup("validate")
    if datamodule.val_set is None:
        raise ConfigError("config key 'data.val_path' is not set: nothing to validate")
    module = SAM2LightningModule(cfg)
    module.build(load_weights=False)  # the weights come from the checkpoint: model.checkpoint is not read
    trainer = make_trainer(cfg)
    results = trainer.validate(
        module, datamodule=datamodule, ckpt_path=args.ckpt, weights_only=not args.trust_checkpoint
    )
    for key, value in sorted((results[0] if results else {}).items()):
        print(f"{key}: {value:.6f}")
    return 0
