"""Callbacks specific to SAM 2 fine-tuning: config beside the checkpoints, final metrics, curves at the end, the
run's parent; and never losing a run: `last.ckpt` always the latest state (`LastCheckpoint`), atomic checkpoint
files, a resumable `last.ckpt` on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sam2train.config import Config, to_yaml
from sam2train.files import atomic_write, remove_stale_temporaries
from sam2train.train.guards import updating_weights

log = logging.getLogger("sam2train")


def run_dir(trainer: L.Trainer) -> Path:
    """The run folder: the first logger's log_dir (all loggers share it), else the trainer's root dir."""
    for logger in trainer.loggers:
        if getattr(logger, "log_dir", None):
            return Path(logger.log_dir)
    return Path(trainer.default_root_dir)


class SaveConfig(L.Callback):
    """Writes the resolved config as `config.yaml` in the run folder and beside the checkpoints when fit starts."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after ModelCheckpoint's setup, which warns about a non-empty checkpoint folder
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            _ = logger.experiment  # let each logger create its folder before we write into it
        text = to_yaml(self.config)
        folders = {run_dir(trainer)}
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
            folders.add(Path(ckpt.dirpath))
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(text)


class CurvesAtEnd(L.Callback):
    """Draws the loss (and J&F where logged) curves from the CSV log to `curves.png` when fit ends."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from sam2train.viz import plot_curves

        for logger in trainer.loggers:
            metrics = Path(getattr(logger, "log_dir", "") or "") / "metrics.csv"
            if isinstance(logger, CSVLogger):
                logger.save()
                if metrics.is_file():
                    plot_curves(metrics, run_dir(trainer) / "curves.png")
                return


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def write_final_metrics(trainer: L.Trainer, module: Any, wall_time: float) -> Path:
    """`final_metrics.json` in the run folder: best score and checkpoint, epochs, steps, wall time, parameter
    counts per group, and the last logged value of every metric."""
    ckpt = trainer.checkpoint_callback
    best = {}
    if isinstance(ckpt, ModelCheckpoint):
        best = {
            "monitor": ckpt.monitor,
            "best_score": _plain(ckpt.best_model_score),
            "best_model_path": ckpt.best_model_path or None,
        }
    last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
    record = next((c for c in trainer.callbacks if isinstance(c, RunRecord)), None)
    history = getattr(module, "val_history", [])
    report = getattr(module, "param_report", {}) or {}
    payload = {
        **best,
        "last_model_path": str(last.path) if last is not None and last.path.is_file() else None,
        "parent": record.parent if record is not None else None,
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "wall_time_s": round(wall_time, 3),
        "parameters": {
            "total": sum(t for t, _ in report.values()),
            "trainable": sum(tr for _, tr in report.values()),
            "per_group": {k: {"total": t, "trainable": tr} for k, (t, tr) in report.items()},
        },
        # a resumed run's own callback metrics lack what only the part before the resume logged
        "metrics": {
            **(history[-1] if history else {}),
            **{k: _plain(v) for k, v in trainer.callback_metrics.items()},
        },
        "validation_history": history,
    }
    out = run_dir(trainer) / "final_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return out


class LastCheckpoint(Checkpoint):
    """`last.ckpt`: the whole training state at the moment it is written: at every epoch's end (after its
    validation), after a validation within an epoch, every `every_n_train_steps` steps, at the step that reaches
    `max_steps` and when training ends (SaveOnInterrupt writes it on Ctrl-C or SIGTERM). The best checkpoints are
    ModelCheckpoint's, apart.

    When training ends, a save of its last step is kept as it is: Lightning resumes exactly from a save at a
    batch's end or a validation's end, while from the end of training it would skip the rest of an epoch that
    `max_steps` stopped, or, at an epoch's end, count one epoch more.
    A Checkpoint runs after the other callbacks (Lightning moves them last), so ModelCheckpoint's best score of this
    validation is in the file.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self.saved_step = -1
        """The global step of the last save (-1: none yet)."""
        self._epoch_end = False

    @property
    def path(self) -> Path:
        return self.dirpath / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self.saved_step or step == 0:
            return
        due = self.every_n_train_steps > 0 and step % self.every_n_train_steps == 0
        if due or 0 < trainer.max_steps <= step:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # at an epoch's end ModelCheckpoint keeps the best file in on_train_epoch_end: saved there, after it
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if trainer.state.fn == "fit" and not trainer.sanity_checking and not last_batch:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready < trainer.num_training_batches:
            return  # stopped inside the epoch (max_steps, a stop request): the save of its last step holds
        self._epoch_end = True
        try:
            self.save(trainer)
        finally:
            self._epoch_end = False

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Lightning resumes an epoch's end as from the end of its validation, where the count of batches that
        # stepped (the loggers' step) has not yet taken the epoch's last batch, and adds it then: so must the file
        if self._epoch_end:
            loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
            if "_batches_that_stepped" in loop:
                loop["_batches_that_stepped"] -= 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.saved_step:
            self.save(trainer)


class RunRecord(L.Callback):
    """The checkpoint of another run this run started from: `parent.json` in the run folder when fit starts, and
    `parent` in final_metrics.json. Carried in the checkpoints, so a later resume of this run keeps it."""

    def __init__(self, parent: dict[str, Any] | None = None) -> None:
        self.parent = parent
        self._new = parent is not None

    def state_dict(self) -> dict[str, Any]:
        return {"parent": self.parent}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._new:  # the run itself continues: its own parent, if any
            self.parent = state_dict.get("parent")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._new and trainer.is_global_zero:
            out = run_dir(trainer) / "parent.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(self.parent, indent=2))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a hidden temporary file beside it, fsyncs it and renames it into place: a crash or
    `kill -9` during a save leaves the previous file whole, never a truncated one. Remote paths (`s3://...`) go
    through Lightning's writer unchanged."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        remove_stale_temporaries(path)  # only rank 0 saves: any temporary file is a killed process's
        with atomic_write(path, durable=True) as f:
            torch.save(checkpoint, f)


class SaveOnInterrupt(L.Callback):
    """When fit stops on Ctrl-C or SIGTERM, saves `last.ckpt` with the whole training state (weights, optimizer,
    schedule, loop and data position, RNG), so `sam2train fit ... --ckpt last` continues where it stopped.

    SIGTERM (and a first Ctrl-C under `sam2train fit`, see `stop_signals`) lets Lightning finish the current
    batch before it stops. Any other exception after a SIGTERM (data workers that got it too) and a bare
    KeyboardInterrupt are saved when they came outside the weight update on a single process; otherwise the
    checkpoints written so far are kept as they are.
    """

    def __init__(self) -> None:
        self.saved: Path | None = None
        """The checkpoint written on the interrupt."""
        self.interrupted = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        graceful = isinstance(exception, SIGTERMException)
        if not (graceful or isinstance(exception, KeyboardInterrupt) or trainer.received_sigterm):
            return
        self.interrupted = True
        if trainer.state.fn != "fit":
            return
        if not graceful and (trainer.world_size > 1 or updating_weights(trainer)):
            log.warning("interrupted during the weight update or on several ranks: no checkpoint written now")
            return
        last = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
        if last is None:
            ckpt = trainer.checkpoint_callback
            folder = Path(ckpt.dirpath) if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath else None
            last = LastCheckpoint(folder or Path(trainer.default_root_dir) / "checkpoints")
        last.save(trainer)
        self.saved = last.path


class StopRequest:
    """The first stop signal the main process received (None: none came)."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Ctrl-C and SIGTERM in the main process of `sam2train fit`.

    While Lightning runs, its own SIGTERM handler is installed (ours runs after it and does nothing): it finishes
    the current batch and stops with SIGTERMException, which SaveOnInterrupt turns into a checkpoint. A first
    Ctrl-C is handed to that handler; a second one interrupts at once. Outside Lightning both interrupt at once
    (KeyboardInterrupt). Processes forked from this one get the default action (data workers ignore both).
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set from the main thread
        return
    main_pid = os.getpid()

    def on_sigterm(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            _default_action(signum)
            return
        request.signal = request.signal or signal.SIGTERM
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # Lightning is not running: nothing to finish
            raise KeyboardInterrupt("SIGTERM")

    def on_sigint(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            _default_action(signum)
            return
        again, request.signal = request.signal is not None, request.signal or signal.SIGINT
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if again or lightning_handler is on_sigterm or not callable(lightning_handler):
            raise KeyboardInterrupt
        print(
            "\nsam2train: Ctrl-C: stopping after this batch and saving last.ckpt "
            "(Ctrl-C again: stop at once, unsaved)",
            file=sys.stderr,
        )
        lightning_handler(signal.SIGTERM, frame)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


def _default_action(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
