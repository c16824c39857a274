"""One training step, ours vs Meta's trainer, on the same batch, weights and trainable set.

    python benchmarks/train_step.py [--device auto|cpu|cuda] [--model sam2.1_hiera_t] [--image-size 256]
        [--frames 8] [--objects 3] [--prompt mask|box|point] [--precision 32|bf16]
        [--trainable image_encoder memory_attention ...] [--steps 5] [--warmup 1] [--out FILE.json]

(a) ours: `SAM2LightningModule` forward (`run_video`) + its `compute_loss` (SAM2TrainingLoss, object_score_weight 1);
(b) Meta: `training.model.sam2.SAM2Train` + `MultiStepMultiMasksAndIous` as the MOSE fine-tune config sets it
(focal 20, dice 1, IoU L1 1, class 1). Each side: forward + loss, backward, grad-norm clip, AdamW step (same lr,
weight decay and clip value on both sides). Both start from the same random weights (ours' state dict loaded
into SAM2Train) and freeze the same groups. The sides alternate step by step after warm-up, in one process.

Meta's prompting is forced to the benchmark's prompt (`meta_forced`): its training-only keys come from the
MOSE fine-tune config, then the point-input probability is set to 0 (mask) or 1 (box, point), the box
probability to 1 (box) or 0, one initial conditioning frame (frame 0), 1 frame to correct, nothing random.
SAM2Train asserts frames to correct >= initial conditioning frames and fails with 0 correction clicks, so no
correction clicks is done by emptying `frames_to_add_correction_pt` after `prepare_prompt_inputs`; there too our
exact first-frame points (tight box; one click) replace the ones Meta samples (mask prompts are the GT mask on
both sides).

Peak memory is measured per side in a fresh child process that holds only that side (CPU: peak RSS, VmHWM;
CUDA: torch.cuda.max_memory_allocated), over two steps (the second holds the optimizer state).
Defaults: CPU hiera tiny, 256 px, fp32; CUDA hiera b+, 1024 px, bf16 autocast; 8 frames, 3 objects, mask
prompts, every group trainable. Writes benchmarks/results/<device>.json unless --out says otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts, VideoBatch
from sam2train.config import TRAINABLE_GROUPS, Config, LossConfig, ModelConfig

RESULTS = Path(__file__).resolve().parent / "results"
MOSE_FINETUNE = "configs/sam2.1_training/sam2.1_hiera_b+_MOSE_finetune.yaml"
PROMPT_KINDS = {"mask": PROMPT_MASK, "box": PROMPT_BOX, "point": PROMPT_POINT}
SIDES = ("ours", "meta")
OUR_VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "chunked": {"object_chunk": 1},
    "lean": {"object_chunk": 1, "checkpoint_image_encoder": True, "activation_checkpointing": True},
}
"""Our side as configured ("ours"), and the memory-saving variants scaling.py adds beside it."""
MEMORY_STEPS = 2


def meta_forced(prompt: str) -> dict[str, Any]:
    """SAM2Train keys set over the MOSE fine-tune config so that Meta prompts frame 0 only, as `prompt` says."""
    return {
        "prob_to_use_pt_input_for_train": 0.0 if prompt == "mask" else 1.0,
        "prob_to_use_box_input_for_train": 1.0 if prompt == "box" else 0.0,
        "num_init_cond_frames_for_train": 1,
        "rand_init_cond_frames_for_train": False,
        "num_frames_to_correct_for_train": 1,
        "rand_frames_to_correct_for_train": False,
        "add_all_frames_to_correct_as_cond": False,
    }


@dataclass
class Settings:
    """One benchmark setting (B = 1 clip of `frames` frames with `objects` objects)."""

    model: str
    image_size: int
    frames: int
    objects: int
    prompt: str
    precision: str
    trainable: list[str] = field(default_factory=lambda: list(TRAINABLE_GROUPS))
    steps: int = 5
    warmup: int = 1
    device: str = "cpu"
    lr: float = 1e-5
    weight_decay: float = 0.1
    clip: float = 0.1
    seed: int = 0
    loss: str = "sam2train"
    """Our side's loss.type: sam2train (the spec's four terms + object score) or sam2 (Meta's, as side b)."""
    activation_checkpointing: bool = False
    """Our side with model.activation_checkpointing (memory attention, memory encoder, decoder recomputed)."""
    checkpoint_image_encoder: bool = False
    """Our side with model.checkpoint_image_encoder (a trainable encoder recomputed frame by frame)."""
    object_chunk: int | None = None
    """Our side with model.object_chunk (the video pass, loss and backward in groups of this many objects)."""
    threads: int | None = None
    """torch intra-op threads (None: torch's default). 1 keeps timings sane on a machine shared with other
    jobs: two OpenMP threads competing for busy cores can slow a step down tenfold."""


# --------------------------------------------------------------------------------------------- data


def make_batch(s: Settings) -> VideoBatch:
    """A seeded clip [1, T, 3, S, S] of noise with N drifting rectangles (never empty) and first-frame prompts
    of kind `s.prompt` (mask: the frame-0 mask; box: its tight box; point: one click at the box centre)."""
    gen = torch.Generator().manual_seed(s.seed)
    t, n, size = s.frames, s.objects, s.image_size
    masks = torch.zeros(t, n, size, size)
    for j in range(n):
        h, w = (int(v) for v in torch.randint(size // 6, size // 3, (2,), generator=gen))
        y, x = (int(v) for v in torch.randint(0, max(1, size - max(h, w) - 2 * t), (2,), generator=gen))
        for i in range(t):
            masks[i, j, y + i : y + i + h, x + 2 * i : x + 2 * i + w] = 1.0
    boxes = torch.zeros(n, 4)
    for j in range(n):
        ys, xs = masks[0, j].nonzero(as_tuple=True)
        boxes[j] = torch.stack([xs.min(), ys.min(), xs.max(), ys.max()]).float()
    prompts = Prompts(
        kind=torch.full((1, n), PROMPT_KINDS[s.prompt], dtype=torch.long),
        point_coords=((boxes[:, :2] + boxes[:, 2:]) / 2)[None, :, None],
        point_labels=torch.ones(1, n, 1, dtype=torch.long),
        boxes=boxes[None],
        masks=masks[0][None].clone(),
    )
    return VideoBatch(
        images=torch.randn(1, t, 3, size, size, generator=gen),
        masks=masks[None],
        valid=torch.ones(1, t, n, dtype=torch.bool),
        ignore=torch.zeros(1, t, size, size, dtype=torch.bool),
        prompts=prompts,
        video_names=["benchmark"],
        frame_indices=torch.arange(t)[None],
        object_ids=torch.arange(1, n + 1)[None],
        orig_sizes=torch.tensor([[size, size]]),
        num_video_frames=torch.tensor([t]),
    ).to(s.device)


def meta_batch(batch: VideoBatch) -> tuple[Any, dict[str, torch.Tensor] | None]:
    """The same clip as Meta's `BatchedVideoDatapoint` (img_batch [T,1,3,S,S], masks [T,N,S,S] bool), and the
    first-frame point inputs our video pass builds from the prompts (None for mask prompts)."""
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    from sam2train.model.video import group_prompts

    _, t, n = batch.shape
    dev = batch.images.device
    frame = torch.arange(t, dtype=torch.int, device=dev)[:, None].expand(t, n)
    datapoint = BatchedVideoDatapoint(
        img_batch=batch.images.transpose(0, 1),
        obj_to_frame_idx=torch.stack([frame, torch.zeros_like(frame)], dim=-1),
        masks=batch.masks[0] > 0.5,
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.stack(
                [torch.zeros_like(frame), batch.object_ids[0].expand(t, n).int(), frame], dim=-1
            ).long(),
            frame_orig_size=batch.orig_sizes[0].expand(t, n, 2).long(),
        ),
        dict_key="all",
        batch_size=[t],
    )
    prompts = Prompts(**{k: v[0] for k, v in vars(batch.prompts).items()})
    if bool((prompts.kind == PROMPT_MASK).all()):
        return datapoint, None
    groups = group_prompts(prompts, batch.images.shape[-1])
    if len(groups) != 1 or groups[0].point_inputs is None:
        raise ValueError("the benchmark gives every object the same kind of point prompt")
    return datapoint, groups[0].point_inputs


# --------------------------------------------------------------------------------------------- models


def build_ours(s: Settings) -> torch.nn.Module:
    """Our SAM2LightningModule with a random (seeded) SAM 2, `s.trainable` groups trainable, on `s.device`."""
    from sam2train.train.module import SAM2LightningModule

    cfg = Config(
        model=ModelConfig(
            config=s.model,
            image_size=s.image_size,
            checkpoint=None,
            trainable_modules=s.trainable,
            activation_checkpointing=s.activation_checkpointing,
            checkpoint_image_encoder=s.checkpoint_image_encoder,
            object_chunk=s.object_chunk,
        ),
        loss=LossConfig(type=s.loss, object_score_weight=1.0),
    )
    module = SAM2LightningModule(cfg)
    torch.manual_seed(s.seed)
    with warnings.catch_warnings():  # random weights on purpose
        warnings.simplefilter("ignore", UserWarning)
        module.build()
    return module.to(s.device).train()


def meta_model_config(s: Settings) -> Any:
    """Our model config turned into SAM2Train's: the MOSE fine-tune config's training-only keys, then
    `meta_forced`."""
    import importlib.resources

    from omegaconf import OmegaConf
    from sam2.modeling.sam2_base import SAM2Base
    from training.model.sam2 import SAM2Train

    from sam2train.model.build import load_model_config

    cfg = load_model_config(s.model, s.image_size)
    cfg._target_ = f"{SAM2Train.__module__}.{SAM2Train.__qualname__}"
    mose = OmegaConf.load(str(importlib.resources.files("sam2") / MOSE_FINETUNE)).trainer.model
    train_only = set(inspect.signature(SAM2Train.__init__).parameters) - set(
        inspect.signature(SAM2Base.__init__).parameters
    )
    for key in sorted(train_only & set(mose)):
        cfg[key] = mose[key]
    for key, value in meta_forced(s.prompt).items():
        cfg[key] = value
    return cfg


def build_meta(s: Settings, state_dict: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Meta's SAM2Train for `s` with `state_dict` (strict) or the same seeded random init as `build_ours`."""
    from hydra.utils import instantiate

    from sam2train.model.build import apply_trainable

    torch.manual_seed(s.seed)
    model = instantiate(meta_model_config(s), _recursive_=True)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    apply_trainable(model, s.trainable)
    return model.to(s.device).train()


def meta_loss() -> torch.nn.Module:
    """MultiStepMultiMasksAndIous exactly as the MOSE fine-tune config builds it."""
    import importlib.resources

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    tree = OmegaConf.load(str(importlib.resources.files("sam2") / MOSE_FINETUNE))
    return instantiate(tree.trainer.loss.all, _convert_="all")


# --------------------------------------------------------------------------------------------- steps


@dataclass
class StepTime:
    total_s: float
    forward_s: float
    """forward + loss"""
    loss: float


class Side:
    """One trainer's full step on a fixed batch: forward + loss under autocast, backward, clip, AdamW."""

    name = ""

    def __init__(self, model: torch.nn.Module, s: Settings) -> None:
        self.model, self.s = model, s
        self.device = torch.device(s.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)

    def set_batch(self, batch: VideoBatch) -> None:
        raise NotImplementedError

    def forward_loss(self) -> torch.Tensor:
        raise NotImplementedError

    def step(self) -> StepTime:
        _sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.precision == "bf16"):
            loss = self.forward_loss()
        _sync(self.device)
        forward = time.perf_counter()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.s.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        return StepTime(time.perf_counter() - start, forward - start, float(loss.detach()))


class OursSide(Side):
    name = "ours"

    def set_batch(self, batch: VideoBatch) -> None:
        self.batch = batch

    def forward_loss(self) -> torch.Tensor:
        total = self.model.compute_loss(self.model(self.batch), self.batch).total
        return total

    def step(self) -> StepTime:
        """With model.object_chunk the groups' forward and backward passes interleave: the whole step is timed
        as one (its forward time is reported as the step's)."""
        if self.s.object_chunk is None:
            return super().step()
        from sam2train.train.chunked import object_chunked_backward

        _sync(self.device)
        start = time.perf_counter()
        module = self.model
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.s.precision == "bf16"):
            loss = object_chunked_backward(module.model, module.criterion, self.batch, module.config)
        torch.nn.utils.clip_grad_norm_(self.params, self.s.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        elapsed = time.perf_counter() - start
        return StepTime(elapsed, elapsed, float(loss.total))


class MetaSide(Side):
    name = "meta"

    def __init__(self, model: torch.nn.Module, s: Settings) -> None:
        from training.trainer import CORE_LOSS_KEY

        super().__init__(model, s)
        self.loss_fn, self.core_key = meta_loss(), CORE_LOSS_KEY

    def set_batch(self, batch: VideoBatch) -> None:
        self.datapoint, self.point_inputs = meta_batch(batch)

    def forward_loss(self) -> torch.Tensor:
        # SAM2Train.forward, with our first-frame points in place of the ones it samples
        model, data = self.model, self.datapoint
        backbone_out = model.prepare_prompt_inputs(model.forward_image(data.flat_img_batch), data)
        if backbone_out["use_pt_input"] != (self.point_inputs is not None):
            raise RuntimeError("SAM2Train chose another prompt type than the benchmark forces")
        if self.point_inputs is not None:
            backbone_out["point_inputs_per_frame"][0] = self.point_inputs
        backbone_out["frames_to_add_correction_pt"] = []  # no correction clicks, as our step
        outputs = model.forward_tracking(backbone_out, data)
        return self.loss_fn(outputs, data.masks)[self.core_key]


def build_sides(s: Settings, names: tuple[str, ...] = SIDES) -> dict[str, Side]:
    """The named sides (`meta`, or one of OUR_VARIANTS) with identical weights (the same seed) and trainable
    sets (give them a batch with `set_batch`)."""
    sides: dict[str, Side] = {}
    for name in names:
        if name in OUR_VARIANTS:
            variant = replace(s, **OUR_VARIANTS[name])
            sides[name] = OursSide(build_ours(variant), variant)
    if "meta" in names:
        ours = next((side.model for side in sides.values()), None)
        sides["meta"] = MetaSide(build_meta(s, ours.model.state_dict() if ours is not None else None), s)
    return {name: sides[name] for name in names}


def apply_threads(s: Settings) -> None:
    if s.threads:
        torch.set_num_threads(s.threads)


def time_sides(sides: dict[str, Side], steps: int, warmup: int) -> dict[str, list[StepTime]]:
    """Alternate the sides step by step (the first side alternates too); warm-up steps are dropped."""
    times: dict[str, list[StepTime]] = {name: [] for name in sides}
    order = list(sides)
    for i in range(warmup + steps):
        for name in order if i % 2 == 0 else order[::-1]:
            result = sides[name].step()
            if i >= warmup:
                times[name].append(result)
    return times


# --------------------------------------------------------------------------------------------- memory


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def memory_of_side(s: Settings, name: str) -> dict[str, float | str]:
    """Build only side `name` in this process and run MEMORY_STEPS steps; static = after building the model and
    batch, peak = high-water mark over the steps (includes static), step = peak - static."""
    import training.loss_fns  # noqa: F401  (both sides import the same modules: same baseline RSS)
    import training.model.sam2  # noqa: F401

    import sam2train.train.module  # noqa: F401

    apply_threads(s)
    side = build_sides(s, (name,))[name]
    side.set_batch(make_batch(s))
    device = torch.device(s.device)
    if device.type == "cuda":
        _sync(device)
        static = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    else:
        static = _proc_status_mb("VmRSS")
    for _ in range(MEMORY_STEPS):
        side.step()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        reserved = torch.cuda.max_memory_reserved(device) / 2**20
        return {"kind": "cuda_max_allocated", "static_mb": static, "peak_mb": peak, "step_mb": peak - static,
                "peak_reserved_mb": reserved}  # fmt: skip
    peak = _proc_status_mb("VmHWM")
    return {"kind": "rss", "static_mb": static, "peak_mb": peak, "step_mb": peak - static}


def measure_memory(s: Settings, name: str) -> dict[str, float | str]:
    """`memory_of_side` in a fresh child process (this script with --memory-child), so no other model, cache
    or earlier peak counts."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, *settings_argv(s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def side_alone(s: Settings, name: str, budget_gb: float | None) -> dict[str, Any]:
    """Build only side `name` in this process, time warm-up + steps and take the memory high-water mark over
    them all (build included: RSS on CPU, `max_memory_allocated` on CUDA). With `budget_gb` (CPU), allocations
    beyond that much address space over the start are refused, so a side that needs more reports
    `out_of_memory` instead of pushing the machine into its OOM killer."""
    import resource

    import training.loss_fns  # noqa: F401  (both sides import the same modules: same baseline RSS)
    import training.model.sam2  # noqa: F401

    import sam2train.train.module  # noqa: F401

    apply_threads(s)
    if budget_gb is not None and torch.device(s.device).type == "cpu":
        limit = int((_proc_status_mb("VmSize") + budget_gb * 1024) * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    device = torch.device(s.device)
    try:
        side = build_sides(s, (name,))[name]
        side.set_batch(make_batch(s))
        times = time_sides({name: side}, s.steps, s.warmup)[name]
    except Exception as exc:  # an allocation refused, bare or wrapped (Hydra wraps errors while building)
        if (
            not isinstance(exc, MemoryError)
            and "allocate memory" not in str(exc)
            and "out of memory" not in str(exc)
        ):
            raise
        return {"out_of_memory": True, "budget_gb": budget_gb, "error": str(exc).splitlines()[0][:200]}
    if device.type == "cuda":
        memory = {"kind": "cuda_max_allocated", "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    else:
        memory = {"kind": "rss", "peak_mb": _proc_status_mb("VmHWM")}
    trainable = sum(p.numel() for p in side.params)
    return {**summarize(times, s.frames, memory), "budget_gb": budget_gb, "trainable_params": trainable}


def settings_argv(s: Settings) -> list[str]:
    """Command-line arguments that reproduce `s` (the device resolved)."""
    return [
        f"--model={s.model}", f"--image-size={s.image_size}", f"--frames={s.frames}",
        f"--objects={s.objects}", f"--prompt={s.prompt}", f"--precision={s.precision}",
        "--trainable", *s.trainable, f"--steps={s.steps}", f"--warmup={s.warmup}", f"--device={s.device}",
        f"--lr={s.lr}", f"--weight-decay={s.weight_decay}", f"--clip={s.clip}", f"--seed={s.seed}",
        f"--loss={s.loss}", *(["--activation-checkpointing"] if s.activation_checkpointing else []),
        *(["--checkpoint-image-encoder"] if s.checkpoint_image_encoder else []),
        *([f"--object-chunk={s.object_chunk}"] if s.object_chunk else []),
        *([f"--threads={s.threads}"] if s.threads else []),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------- report


def device_slug(device: str) -> str:
    """`cpu`, or the CUDA device's name in lower case with dashes (e.g. nvidia-h100-80gb-hbm3)."""
    if torch.device(device).type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(torch.device(device)).lower()).strip("-")


def _load_avg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def environment(device: str) -> dict[str, Any]:
    """Versions and the machine (with its load average, since other work skews CPU timings)."""
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "sam2": importlib.metadata.version("sam2"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": _load_avg(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        env.update(
            gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
        )
    return env


def summarize(times: list[StepTime], frames: int, memory: dict[str, Any]) -> dict[str, Any]:
    """One side's figures: step and forward time (median/min/max, s), frames/s at the median, memory, losses."""
    steps = [t.total_s for t in times]
    forward = [t.forward_s for t in times]
    median = statistics.median(steps)
    return {
        "step_s": {"median": median, "min": min(steps), "max": max(steps), "all": steps},
        "forward_s": {"median": statistics.median(forward), "min": min(forward), "max": max(forward)},
        "frames_per_s": frames / median,
        "memory": memory,
        "loss": [t.loss for t in times],
    }


def ratios(ours: dict[str, Any], meta: dict[str, Any]) -> dict[str, float]:
    """speed: ours frames/s over Meta's (> 1: ours faster); memory: ours peak over Meta's (< 1: ours smaller)."""
    return {
        "speed_ours_over_meta": ours["frames_per_s"] / meta["frames_per_s"],
        "peak_memory_ours_over_meta": ours["memory"]["peak_mb"] / meta["memory"]["peak_mb"],
        "step_memory_ours_over_meta": ours["memory"]["step_mb"] / max(meta["memory"]["step_mb"], 1e-9),
    }


def trainable_params(sides: dict[str, Side]) -> int:
    """The number of trainable parameters, checked to be the same on every side."""
    counts = {name: sum(p.numel() for p in side.params) for name, side in sides.items()}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"trainable parameter counts differ: {counts}")
    return next(iter(counts.values()))


def measure_point(sides: dict[str, Side], s: Settings) -> dict[str, Any]:
    """Both sides on `make_batch(s)`: timed alternately here, memory in one child process per side.
    Returns {"ours": summary, "meta": summary, "ratios": ...}."""
    batch = make_batch(s)
    for side in sides.values():
        side.set_batch(batch)
    times = time_sides(sides, s.steps, s.warmup)
    if torch.device(s.device).type == "cuda":
        torch.cuda.empty_cache()  # leave the GPU to the child
    memory = {name: measure_memory(s, name) for name in sides}
    figures = {name: summarize(times[name], s.frames, memory[name]) for name in sides}
    extra = {f"ratios_{n}": ratios(figures[n], figures["meta"]) for n in sides if n not in SIDES}
    return {**figures, "ratios": ratios(figures["ours"], figures["meta"]), **extra}


def header(s: Settings, benchmark: str) -> dict[str, Any]:
    """The fields every result file starts with."""
    return {
        "benchmark": benchmark,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_slug(s.device),
        "settings": asdict(s),
        "meta_forced": meta_forced(s.prompt),
        "environment": environment(s.device),
    }


def run(s: Settings) -> dict[str, Any]:
    """The train_step result for `s`."""
    apply_threads(s)
    result = header(s, "train_step")
    sides = build_sides(s)
    result["trainable_params"] = trainable_params(sides)
    result.update(measure_point(sides, s))
    result["environment"]["load_avg_end"] = _load_avg()
    return result


def format_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    mem_name = "peak RSS" if result["ours"]["memory"]["kind"] == "rss" else "peak alloc"
    lines = [
        f"{result['device']}: {s['model']}, {s['image_size']} px, {s['frames']} frames, {s['objects']} objects, "
        f"{s['prompt']} prompts, precision {s['precision']}, {result['trainable_params']:,} trainable, "
        f"{s['steps']} steps after {s['warmup']} warm-up (load avg {result['environment']['load_avg']})",
        f"{'side':<5} {'step s median':>13} {'min':>7} {'max':>7} {'fwd s':>7} {'frames/s':>9} "
        f"{mem_name + ' MB':>14} {'step MB':>9}",
    ]
    for name in SIDES:
        r = result[name]
        st, mem = r["step_s"], r["memory"]
        lines.append(
            f"{name:<5} {st['median']:>13.3f} {st['min']:>7.3f} {st['max']:>7.3f} {r['forward_s']['median']:>7.3f} "
            f"{r['frames_per_s']:>9.2f} {mem['peak_mb']:>14.0f} {mem['step_mb']:>9.0f}"
        )
    q = result["ratios"]
    lines.append(
        f"ours/Meta: speed x{q['speed_ours_over_meta']:.2f} (>1: ours faster), peak memory "
        f"x{q['peak_memory_ours_over_meta']:.2f}, step memory x{q['step_memory_ours_over_meta']:.2f} "
        "(<1: ours smaller)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    """The options shared with scaling.py (None: the device's default, see `settings_from_args`)."""
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--model", help="official config name (default: sam2.1_hiera_t on CPU, b+ on CUDA)")
    parser.add_argument("--image-size", type=int, help="default: 256 on CPU, 1024 on CUDA")
    parser.add_argument("--prompt", default="mask", choices=tuple(PROMPT_KINDS))
    parser.add_argument("--precision", choices=("32", "bf16"), help="default: 32 on CPU, bf16 on CUDA")
    parser.add_argument("--trainable", nargs="+", default=list(TRAINABLE_GROUPS), choices=TRAINABLE_GROUPS)
    parser.add_argument("--steps", type=int, help="timed steps per side (default: 5 on CPU, 20 on CUDA)")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per side first (default: 1 on CPU, 3 on CUDA)"
    )
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--clip", type=float, default=0.1, help="grad-norm clip (Meta's fine-tune value)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 on a shared machine)")
    parser.add_argument(
        "--loss", default="sam2train", choices=("sam2train", "sam2"), help="our side's loss.type"
    )
    parser.add_argument(
        "--activation-checkpointing", action="store_true", help="our side with model.activation_checkpointing"
    )
    parser.add_argument(
        "--checkpoint-image-encoder", action="store_true", help="our side with model.checkpoint_image_encoder"
    )
    parser.add_argument("--object-chunk", type=int, help="our side with model.object_chunk")


def settings_from_args(args: argparse.Namespace, frames: int, objects: int) -> Settings:
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    return Settings(
        model=args.model or ("sam2.1_hiera_b+" if gpu else "sam2.1_hiera_t"),
        image_size=args.image_size or (1024 if gpu else 256),
        frames=frames,
        objects=objects,
        prompt=args.prompt,
        precision=args.precision or ("bf16" if gpu else "32"),
        trainable=list(args.trainable),
        steps=args.steps if args.steps is not None else (20 if gpu else 5),
        warmup=args.warmup if args.warmup is not None else (3 if gpu else 1),
        device=device,
        lr=args.lr,
        weight_decay=args.weight_decay,
        clip=args.clip,
        seed=args.seed,
        loss=args.loss,
        activation_checkpointing=args.activation_checkpointing,
        checkpoint_image_encoder=args.checkpoint_image_encoder,
        object_chunk=args.object_chunk,
        threads=args.threads,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_settings_args(parser)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/<device>.json)")
    parser.add_argument("--memory-child", choices=(*OUR_VARIANTS, "meta"), help=argparse.SUPPRESS)
    parser.add_argument("--side-child", choices=(*OUR_VARIANTS, "meta"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-budget-gb", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    s = settings_from_args(args, args.frames, args.objects)
    if args.side_child:
        result = side_alone(s, args.side_child, args.memory_budget_gb)
        print(json.dumps(result))
        return result
    if args.memory_child:
        result = memory_of_side(s, args.memory_child)
        print(json.dumps(result))
        return result
    result = run(s)
    print(format_table(result))
    out = args.out or RESULTS / f"{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
