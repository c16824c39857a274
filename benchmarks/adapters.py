"""What LoRA adapters cost and what they learn, against full fine-tuning and memory-only training.

    python benchmarks/adapters.py measure [--configs sam2.1_hiera_t,sam2.1_hiera_b+] [--image-size 256]
        [--frames 4] [--objects 2] [--steps 3] [--warmup 1] [--out benchmarks/results/adapters_cpu.json]
    python benchmarks/adapters.py learn [--base-steps 300] [--steps 200] [--every 50] [--image-size 256]
        [--data ../shared/data/davis2016] [--work runs/adapters] [--out benchmarks/results/adapters_learning_cpu.json]

Four variants (`VARIANTS`): `full_finetune` (every group), `memory_only` (the memory_only recipe's groups),
`lora_encoder_memory` (LoRA on the image encoder, memory attention and memory encoder; nothing else trains) and
`lora_everything` (LoRA on all four adapter groups).

`measure`: per model config and variant, the trainable parameters and the bytes of AdamW state after one step
(built here), then s/step and peak memory of real training steps (`sam2train.train.benchmark.measure_isolated`:
`warmup + steps` steps of `SAM2LightningModule` in a fresh process; peak RSS on CPU, max allocated on CUDA) on
synthetic demo clips of `--frames` frames and `--objects` objects at `--image-size`. Random weights: cost does
not depend on them.

`learn`: no pretrained weights are used (none are at hand here), so the script first makes its own base: it trains
hiera t from random weights with the DAVIS-2016 scratch recipe (`configs/davis2016_scratch.yaml`) for
`--base-steps` steps and exports it. Each variant then fine-tunes that base for the same `--steps` steps on the
synthetic demo domain (`sam2train demo-data`'s videos: a domain the base never saw) with a checkpoint every
`--every` steps; the held-out demo videos are tracked from their first-frame masks (`sam2train predict`) and scored
(DAVIS J&F) before (the base) and after (the mean over the last two checkpoints, single checkpoints being noisy).
LoRA variants train at `--lora-lr` (adapters start at zero and need larger steps), the others at `--lr`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from learning_curve import device_name, machine_info, predict_and_score, summarize_curve  # noqa: E402
from sam2train.config import TRAINABLE_GROUPS  # noqa: E402

ALL_GROUPS = list(TRAINABLE_GROUPS)
MEMORY_GROUPS = ["memory_attention", "memory_encoder", "obj_ptr_proj", "obj_ptr_tpos_proj"]


def _list(values: list[str]) -> str:
    return "[" + ",".join(values) + "]"


VARIANTS: dict[str, list[str]] = {
    "full_finetune": [f"model.trainable_modules={_list(ALL_GROUPS)}", "model.adapters.type=null"],
    "memory_only": [f"model.trainable_modules={_list(MEMORY_GROUPS)}", "model.adapters.type=null"],
    "lora_encoder_memory": [
        "model.trainable_modules=[]",
        "model.adapters.type=lora",
        "model.adapters.targets=[image_encoder,memory_attention,memory_encoder]",
    ],
    "lora_everything": [
        "model.trainable_modules=[]",
        "model.adapters.type=lora",
        "model.adapters.targets=[image_encoder,memory_attention,memory_encoder,sam_mask_decoder]",
    ],
}
"""Variant -> the config overrides that make it (LoRA rank 8, alpha 16: the defaults)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="trainable parameters, optimizer state, s/step, peak memory")
    m.add_argument("--configs", default="sam2.1_hiera_t,sam2.1_hiera_b+")
    m.add_argument("--variants", default=",".join(VARIANTS))
    m.add_argument("--image-size", type=int, default=256)
    m.add_argument("--frames", type=int, default=4)
    m.add_argument("--objects", type=int, default=2)
    m.add_argument("--steps", type=int, default=3)
    m.add_argument("--warmup", type=int, default=1)
    m.add_argument("--out", type=Path)
    le = sub.add_parser("learn", help="fine-tune one base per variant on the demo domain, J&F before/after")
    le.add_argument("--base-steps", type=int, default=300)
    le.add_argument("--steps", type=int, default=200)
    le.add_argument("--every", type=int, default=50)
    le.add_argument("--image-size", type=int, default=256)
    le.add_argument("--variants", default=",".join(VARIANTS))
    le.add_argument("--lr", type=float, default=1e-4)
    le.add_argument("--lora-lr", type=float, default=5e-4)
    le.add_argument("--demo-videos", type=int, default=16, help="demo videos (a quarter held out)")
    le.add_argument("--demo-frames", type=int, default=16)
    le.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "davis2016")
    le.add_argument("--work", type=Path, default=REPO / "runs" / "adapters")
    le.add_argument("--out", type=Path)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------ measure


def optimizer_state(cfg: Any) -> dict[str, int]:
    """Trainable parameters and the bytes of AdamW's state after one step (zero gradients) of `cfg`'s model."""
    import torch

    from sam2train.model.build import build_for_training
    from sam2train.train.optim import build_optimizer

    model, report = build_for_training(cfg.model, load_weights=False)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = build_optimizer(model, cfg.optimizer)
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    return {
        "total_params": sum(total for total, _ in report.values()),
        "trainable_params": sum(p.numel() for p in params),
        "optimizer_state_tensors": len(optimizer.state),
        "optimizer_state_bytes": state,
        "per_group": {g: {"total": t, "trainable": tr} for g, (t, tr) in report.items()},
    }


def measure(args: argparse.Namespace, write: Any = None) -> dict[str, Any]:
    """The `measure` report; `write(report)` after each variant (partial results survive an interrupted run)."""
    import tempfile

    from sam2train.config import load_config
    from sam2train.data.demo import write_demo_dataset
    from sam2train.train.benchmark import measure_isolated

    results: dict[str, Any] = {}
    report = {
        "what": "trainable parameters, AdamW state after one step, s/step and peak memory per variant",
        "settings": {
            "image_size": args.image_size,
            "frames": args.frames,
            "objects": args.objects,
            "steps": args.steps,
            "warmup": args.warmup,
            "prompts": "mask",
            "lora": {"r": 8, "alpha": 16},
        },
        "variants": VARIANTS,
        "device": device_name(),
        "machine": machine_info(),
        "results": results,
    }
    with tempfile.TemporaryDirectory(prefix="adapters-bench-") as tmp:
        size = (args.image_size, args.image_size)
        data = write_demo_dataset(
            Path(tmp) / "demo", videos=2, frames=args.frames + 2, size=size, objects=args.objects
        )
        for config in args.configs.split(","):
            for variant in args.variants.split(","):
                overrides = [
                    f"model.config={config}",
                    f"model.image_size={args.image_size}",
                    f"data.train_path={data['train']}",
                    "data.val_path=null",
                    f"data.clip_length={args.frames}",
                    f"data.max_objects={args.objects}",
                    "data.num_workers=0",
                    "prompts.type=mask",
                    *VARIANTS[variant],
                ]
                cfg = load_config(REPO / "configs" / "default.yaml", overrides)
                counts = optimizer_state(cfg)
                run = measure_isolated(cfg, steps=args.steps, warmup=args.warmup)
                row = {
                    **counts,
                    "s_per_step": run.s_per_step,
                    "peak_memory_bytes": run.peak_memory_bytes,
                    "peak_memory_kind": run.peak_memory_kind,
                    "measurement": asdict(run),
                }
                results.setdefault(config, {})[variant] = row
                if write is not None:
                    write(report)
                print(
                    f"{config:16} {variant:20} trainable {counts['trainable_params']:>11,}  AdamW state "
                    f"{counts['optimizer_state_bytes'] / 2**20:8.1f} MiB  {run.s_per_step:6.2f} s/step  "
                    f"peak {run.peak_memory_bytes / 2**30:5.2f} GiB",
                    flush=True,
                )
    return report


# ------------------------------------------------------------------------------------------------ learn


def sam2train(*argv: str) -> None:
    """The `sam2train` command in a subprocess (its own Lightning state, seeds and workers)."""
    cmd = [sys.executable, "-m", "sam2train.cli", *argv]
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise RuntimeError(f"failed: {' '.join(cmd)}")


def train_base(args: argparse.Namespace, work: Path) -> Path:
    """The DAVIS-2016 scratch recipe for --base-steps steps, exported to `base.pt` (its `base.yaml` beside)."""
    data = args.data.resolve()
    if not data.is_dir():
        raise SystemExit(f"--data {data}: DAVIS-2016 not found (JPEGImages/480p, Annotations/480p)")
    base = work / "base.pt"
    if base.is_file():
        print(f"reusing {base}", flush=True)
        return base
    sam2train(
        "fit",
        "--config",
        str(REPO / "configs" / "davis2016_scratch.yaml"),
        f"data.train_path={data}",
        f"data.val_path={data}",
        f"model.image_size={args.image_size}",
        f"trainer.max_steps={args.base_steps}",
        f"scheduler.T_max={args.base_steps}",
        f"scheduler.warmup_steps={min(20, args.base_steps // 2)}",
        f"checkpoint.every_n_train_steps={args.base_steps}",
        "checkpoint.monitor=lr",  # logged every step; no validation here (the base is scored on the demo domain)
        "trainer.limit_val_batches=0",
        "trainer.validate_first=false",
        f"logging.root_dir={work / 'runs'}",
        "logging.version=base",
        "logging.viz_every_n_epochs=0",
    )
    last = work / "runs" / "davis2016_scratch" / "base" / "checkpoints" / "last.ckpt"
    sam2train("export", "--ckpt", str(last), "--out", str(base))
    return base


def fine_tune(
    args: argparse.Namespace, variant: str, base: Path, demo: dict, work: Path
) -> list[tuple[int, Path]]:
    """`variant` from `base` on the demo training videos for --steps steps; its periodic checkpoints."""
    from learning_curve import periodic_checkpoints

    lr = args.lora_lr if variant.startswith("lora") else args.lr
    sam2train(
        "fit",
        "--config",
        str(REPO / "configs" / "default.yaml"),
        f"data.train_path={demo['train']}",
        f"data.val_path={demo['val']}",  # not run (limit_val_batches 0): with it, every periodic checkpoint stays
        "trainer.limit_val_batches=0",
        "trainer.validate_first=false",
        "data.clip_length=4",
        "data.max_objects=2",
        "data.num_workers=2",
        "model.config=sam2.1_hiera_t",
        f"model.checkpoint={base}",
        f"model.image_size={args.image_size}",
        *VARIANTS[variant],
        f"optimizer.lr={lr}",
        "trainer.max_epochs=-1",
        f"trainer.max_steps={args.steps}",
        "scheduler.interval=step",
        f"scheduler.T_max={args.steps}",
        f"scheduler.warmup_steps={min(20, args.steps // 4)}",
        "checkpoint.monitor=lr",
        "checkpoint.save_top_k=-1",
        f"checkpoint.every_n_train_steps={args.every}",
        f"logging.root_dir={work / 'runs'}",
        f"logging.name={variant}",
        "logging.version=ft",
        "logging.viz_every_n_epochs=0",
    )
    return periodic_checkpoints(work / "runs" / variant / "ft" / "checkpoints", args.steps, args.every)


def learn(args: argparse.Namespace) -> dict[str, Any]:
    from sam2train.data.demo import write_demo_dataset

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    base = train_base(args, work)
    base_s = time.perf_counter() - start
    demo = write_demo_dataset(
        work / "demo", videos=args.demo_videos, frames=args.demo_frames, size=(192, 256), objects=2, seed=11
    )
    heldout = list(demo["val_videos"])
    frames, gt = Path(demo["val"]) / "JPEGImages", Path(demo["val"]) / "Annotations"

    def score(
        ckpt: Path, name: str
    ) -> float:  # base.pt: predict reads base.yaml (the model config) beside it
        return predict_and_score(ckpt, heldout, frames, gt, work / "pred" / name)["J&F"]

    before = score(base, "base")
    print(f"base: held-out demo J&F {before:.4f}", flush=True)
    results: dict[str, Any] = {}
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        checkpoints = fine_tune(args, variant, base, demo, work)
        fit_s = time.perf_counter() - t0
        scored = [
            {"step": step, "heldout": score(path, f"{variant}_{step}"), "fit": 0.0}
            for step, path in checkpoints
        ]
        _, mean = summarize_curve(scored)
        results[variant] = {
            "heldout_before": before,
            "heldout_after_mean_last_two": mean["heldout"],
            "steps_averaged": mean["steps"],
            "checkpoints": [{k: c[k] for k in ("step", "heldout")} for c in scored],
            "fit_wall_s": round(fit_s, 1),
        }
        print(f"{variant}: held-out demo J&F {before:.4f} -> {mean['heldout']:.4f}", flush=True)
    return {
        "what": "held-out J&F on the synthetic demo domain before and after fine-tuning one base per variant",
        "base": {
            "recipe": "configs/davis2016_scratch.yaml",
            "steps": args.base_steps,
            "wall_s": round(base_s, 1),
        },
        "settings": {
            "steps": args.steps,
            "every": args.every,
            "image_size": args.image_size,
            "lr": args.lr,
            "lora_lr": args.lora_lr,
            "demo": {k: demo[k] for k in ("train_videos", "val_videos", "frames", "objects", "size", "seed")},
        },
        "variants": VARIANTS,
        "device": device_name(),
        "machine": machine_info(),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "results": results,
    }


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning")
    stem = "adapters" if args.command == "measure" else "adapters_learning"
    out = args.out or REPO / "benchmarks" / "results" / f"{stem}_{device_name()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict[str, Any]) -> None:
        result["machine"]["load_average_at_end"] = list(os.getloadavg())
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")

    write(measure(args, write) if args.command == "measure" else learn(args))
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    main()
