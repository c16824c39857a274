"""`sam2train benchmark`: a few training steps of exactly one config (its model, data, loss, precision and trainable
set, on one device) after a warm-up, measured: s/step, clips/s, object-frames/s and peak memory; and the search
for the largest settings that stay under a memory budget (`fit_memory`).

Each measurement runs by default in a fresh process (`measure_isolated`: this module run with `python -m`), so
that a peak is that of the run alone and running out of memory ends the child, not the caller. The steps are the
real ones: `SAM2LightningModule` and `SAM2LightningDataModule` under the Trainer of `make_trainer`, with what does
not belong to a training step taken out (validation, checkpoints, loggers, the progress bar).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from sam2train import errors
from sam2train.config import Config, ModelConfig, load_config, to_yaml
from sam2train.errors import UserError
from sam2train.memory import peak_rss_bytes, peak_rss_reset


@dataclass
class Measurement:
    """What `measure` found for one config. Times cover the training batches after the warm-up (forward,
    backward and the optimizer step), data loading excluded (`data_wait_s_per_step`)."""

    settings: dict[str, Any]
    """The searched keys and their values (empty for a plain benchmark)."""
    device: str = ""
    precision: str = ""
    steps: int = 0
    """Optimizer steps measured (each `trainer.accumulate_grad_batches` batches)."""
    warmup: int = 0
    """Optimizer steps run before, not measured."""
    batches: int = 0
    clips: int = 0
    frames_per_clip: float = 0.0
    objects_per_clip: float = 0.0
    """Tracked objects per clip (padding excluded), averaged over the measured clips."""
    s_per_step: float = 0.0
    clips_per_s: float = 0.0
    object_frames_per_s: float = 0.0
    """Clips x frames x tracked objects per second."""
    data_wait_s_per_step: float = 0.0
    """Time per step spent outside the training batches (mostly waiting for the data loader)."""
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    """`cuda max_memory_allocated` on a GPU, `peak RSS` (of the process, during the measured steps) on CPU."""
    reserved_memory_bytes: int | None = None
    """CUDA only: the most the caching allocator held (what the GPU had to have)."""
    out_of_memory: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.out_of_memory and self.error is None

    @property
    def needed_bytes(self) -> int:
        """The memory the run needs: reserved on a GPU (allocated plus the allocator's caching), RSS on CPU."""
        return self.reserved_memory_bytes or self.peak_memory_bytes


# --------------------------------------------------------------------------------------------- one measurement


def benchmark_config(cfg: Config, steps: int, warmup: int, root: str | Path) -> Config:
    """`cfg` as the benchmark runs it: the same model, data, loss, precision and trainable set, one device, no
    validation, no checkpoints or loggers (the run folder under `root`), `warmup + steps` optimizer steps."""
    return replace(
        cfg,
        data=replace(cfg.data, val_path=None, val_videos=None, check_at_setup=False),
        trainer=replace(
            cfg.trainer,
            devices=1,
            num_nodes=1,
            max_steps=warmup + steps,
            max_epochs=-1,
            limit_train_batches=None,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            validate_first=False,
            val_check_interval=1.0,
        ),
        logging=replace(
            cfg.logging,
            root_dir=str(root),
            loggers=[],
            progress_bar="none",
            viz_every_n_epochs=0,
            version="bench",
        ),
        checkpoint=replace(cfg.checkpoint, every_n_train_steps=None, save_last=False),
        early_stopping=replace(cfg.early_stopping, enabled=False),
    )


class StepTimer(L.Callback):
    """Times the training batches once `warmup` optimizer steps are done, counts their clips and object-frames,
    and records the peak memory of those batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started: float | None = None
        self.ended = 0.0
        self.busy = 0.0
        self.batches = self.clips = self.frames = self.object_frames = 0
        self._t0 = 0.0
        self._device: torch.device | None = None

    def _sync(self) -> None:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        if trainer.global_step < self.warmup:
            return
        self._device = pl_module.device
        self._sync()
        if self.started is None:
            if self._device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self._device)
            else:
                peak_rss_reset()
            self.started = time.perf_counter()
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if self.started is None:
            return
        self._sync()
        self.ended = time.perf_counter()
        self.busy += self.ended - self._t0
        b, t, _ = batch.shape
        self.batches += 1
        self.clips += b
        self.frames += b * t
        self.object_frames += int((batch.object_ids >= 0).sum()) * t

    def result(self, steps: int, precision: str) -> Measurement:
        device = self._device or torch.device("cpu")
        m = Measurement(
            settings={}, device=_device_name(device), precision=precision, steps=steps, warmup=self.warmup
        )
        if self.started is None or self.batches == 0:
            m.error = "no training batch was measured"
            return m
        wall = self.ended - self.started
        m.batches, m.clips = self.batches, self.clips
        m.frames_per_clip = self.frames / self.clips
        m.objects_per_clip = self.object_frames / self.frames
        m.s_per_step = self.busy / steps
        m.clips_per_s = self.clips / self.busy
        m.object_frames_per_s = self.object_frames / self.busy
        m.data_wait_s_per_step = max(0.0, wall - self.busy) / steps
        if device.type == "cuda":
            m.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
            m.reserved_memory_bytes = torch.cuda.max_memory_reserved(device)
            m.peak_memory_kind = "cuda max_memory_allocated"
        else:
            m.peak_memory_bytes = peak_rss_bytes()
            m.peak_memory_kind = "peak RSS"
        return m


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def check_step_counts(steps: int, warmup: int) -> None:
    if steps < 1 or warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")


def measure(cfg: Config, steps: int = 3, warmup: int = 1, memory_limit: int | None = None) -> Measurement:
    """Run `warmup + steps` training steps of `cfg` (see `benchmark_config`) in this process and measure the
    last `steps`. `memory_limit` (bytes, CUDA only) caps what the allocator may take, so a setting over it
    runs out of memory instead of borrowing the rest of a larger GPU. Running out of memory is reported in the
    result (`out_of_memory`); a config error raises."""
    from sam2train.data.datamodule import SAM2LightningDataModule
    from sam2train.train.module import SAM2LightningModule
    from sam2train.train.trainer import make_trainer

    check_step_counts(steps, warmup)
    with tempfile.TemporaryDirectory(prefix="sam2train-bench-") as root:
        run = benchmark_config(cfg, steps, warmup, root)
        timer = StepTimer(warmup)
        # stdout stays for the report: what the module and Lightning print goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            L.seed_everything(cfg.seed, workers=True, verbose=False)
            datamodule = SAM2LightningDataModule(run)
            datamodule.setup("fit")
            module = SAM2LightningModule(run)
            trainer = make_trainer(run, callbacks=[timer])
            trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, Checkpoint)]
            device = trainer.strategy.root_device
            if memory_limit is not None and device.type == "cuda":
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, memory_limit / total), device)
            try:
                trainer.fit(module, datamodule=datamodule)
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
                return Measurement(
                    settings={}, device=_device_name(device), out_of_memory=True, error=str(exc)[:300]
                )
    return timer.result(steps, str(trainer.precision))


# --------------------------------------------------------------------------------------------- in a child process


def measure_isolated(
    cfg: Config,
    steps: int = 3,
    warmup: int = 1,
    memory_limit: int | None = None,
    timeout: float | None = None,
) -> Measurement:
    """`measure` in a fresh Python process (this module, `python -m`): the peak is the run's own, and a run that
    exhausts memory (a CUDA OOM, or the kernel's OOM killer on CPU) is reported as `out_of_memory`. A user error
    in the child (config, data, checkpoint) is raised here with its message."""
    with tempfile.TemporaryDirectory(prefix="sam2train-bench-") as tmp:
        spec = {
            "config": str(Path(tmp) / "config.yaml"),
            "out": str(Path(tmp) / "result.json"),
            "steps": steps,
            "warmup": warmup,
            "memory_limit": memory_limit,
        }
        Path(spec["config"]).write_text(to_yaml(cfg))
        cmd = [sys.executable, "-m", "sam2train.train.benchmark", json.dumps(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out = Path(spec["out"])
        if out.is_file():
            result = json.loads(out.read_text())
            if "user_error" in result:
                kind = getattr(errors, result["kind"], UserError)
                raise (kind if isinstance(kind, type) and issubclass(kind, UserError) else UserError)(
                    result["user_error"]
                )
            return Measurement(**result)
    if proc.returncode in (-9, 137):  # SIGKILL: the kernel's OOM killer
        return Measurement(settings={}, out_of_memory=True, error="killed (out of memory)")
    tail = "\n".join((proc.stderr or "").strip().splitlines()[-15:])
    raise RuntimeError(f"benchmark child process failed (exit {proc.returncode}):\n{tail}")


def _child(spec_json: str) -> None:
    """The child of `measure_isolated`: measure, write the result (or the user error) as JSON."""
    spec = json.loads(spec_json)
    out = Path(spec["out"])
    try:
        cfg = load_config(spec["config"])
        result = asdict(measure(cfg, spec["steps"], spec["warmup"], spec["memory_limit"]))
    except UserError as exc:
        result = {"user_error": str(exc), "kind": type(exc).__name__}
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------- the memory fit


@dataclass
class FitSearch:
    """The outcome of `fit_memory`: every setting tried, in order, and the chosen one (None: nothing fits)."""

    budget_bytes: int
    axes: list[tuple[str, list[Any]]]
    tried: list[Measurement] = field(default_factory=list)
    chosen: Measurement | None = None

    def fits(self, m: Measurement) -> bool:
        return m.ok and m.needed_bytes <= self.budget_bytes


def default_axes(cfg: Config) -> list[tuple[str, list[Any]]]:
    """What `--fit-memory` searches, each axis largest first: `data.clip_length` from the config's down to 2
    (1 for a 1-frame config), then `model.object_chunk` (where the key exists) from null (all objects at once)
    down to 1."""
    length = cfg.data.clip_length
    lengths = sorted({length} | {max(min(2, length), length * k // 8) for k in (6, 4, 3, 2, 1)}, reverse=True)
    axes: list[tuple[str, list[Any]]] = [("data.clip_length", lengths)]
    if "object_chunk" in {f.name for f in fields(ModelConfig)}:
        most = cfg.data.max_objects or 16
        chunks = [k for k in (16, 8, 4, 2, 1) if k < most]
        axes.append(("model.object_chunk", [None, *chunks]))
    return axes


def _largest_fitting(values: list[Any], fits: Callable[[Any], bool]) -> int | None:
    """The index of the first of `values` (largest first) for which `fits` holds, or None; assumes that once one
    fits every later one does (memory falls along each axis): a binary search."""
    lo, hi, best = 0, len(values) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(values[mid]):
            best, hi = mid, mid - 1
        else:
            lo = mid + 1
    return best


def fit_memory(
    axes: list[tuple[str, list[Any]]],
    budget: int,
    run: Callable[[dict[str, Any]], Measurement],
) -> FitSearch:
    """The largest settings under `budget` bytes, one axis after another: each axis gets its largest value that
    fits while the axes after it are at their smallest (most frugal) value, then keeps it. `run(settings)`
    measures one setting ({key: value}); each setting runs at most once."""
    search = FitSearch(budget_bytes=budget, axes=axes)
    seen: dict[tuple, Measurement] = {}

    def measured(settings: dict[str, Any]) -> Measurement:
        key = tuple(sorted(settings.items(), key=lambda kv: kv[0]))
        if key not in seen:
            m = run(settings)
            m.settings = dict(settings)
            seen[key] = m
            search.tried.append(m)
        return seen[key]

    chosen: dict[str, Any] = {}
    for i, (key, values) in enumerate(axes):
        rest = {k: vs[-1] for k, vs in axes[i + 1 :]}
        best = _largest_fitting(
            values, lambda v, key=key, rest=rest: search.fits(measured({**chosen, key: v, **rest}))
        )
        if best is None:
            return search
        chosen[key] = values[best]
    search.chosen = measured(chosen)
    return search


def overrides_of(settings: dict[str, Any]) -> list[str]:
    """`key=value` overrides for `load_config` (null for None)."""
    return [f"{k}={'null' if v is None else v}" for k, v in settings.items()]


if __name__ == "__main__":
    _child(sys.argv[1])
