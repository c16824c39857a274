"""Does it learn on real video? Train SAM 2 (hiera t) from random weights on DAVIS-2016 and score each checkpoint.

    python benchmarks/learning_curve.py [--steps 600] [--every 150] [--image-size 256] [--out-dir DIR]
        [--data ../shared/data/davis2016] [--heldout a,b,...] [--fit-seqs a,b,...] [--frames-limit N]
        [--run-root runs] [key=value ...]

1. The random model the run starts from (the fit's seed, built as `sam2train fit` builds it) is saved as
   `initial.ckpt` in the run folder: step 0 of the curve.
2. `sam2train fit --config configs/davis2016_scratch.yaml` runs in a subprocess for --steps steps, keeping a
   checkpoint every --every steps; trailing key=value arguments are passed on to it as overrides.
3. Each model (step 0, then every checkpoint) tracks the first-frame ground-truth mask through every frame of the
   held-out sequences and of a few training sequences (fit) with `sam2train predict`; `evaluate_folders` (what
   `sam2train evaluate` runs) gives DAVIS J&F on the full-resolution masks. The trivial baseline that copies the
   first-frame mask to every frame is scored the same way.

Writes `<out-dir>/learning_<device>.json` (device: cpu, or the CUDA device name, slugified) and
`learning_<device>.png` (J&F vs step, held-out and fit, the copy-first-frame baselines as horizontal lines).
The JSON: `initial` and each of `checkpoints` are {step, heldout, fit, detail, checkpoint} (heldout / fit: J&F of
that split; detail: J, F, recall, decay and per-sequence J&F of each); `copy_first_frame` {heldout, fit, detail};
`best` {step, heldout, fit} (the checkpoint with the best held-out J&F); `mean_last_two` {steps, heldout, fit}
(the headline: the mean over the last two checkpoints, since single checkpoints are noisy); `heldout_sequences`,
`fit_sequences`, `in_training_validation` (val/J&F at the model's resolution after each epoch), `device`,
`machine`, `wall_time_s` {total, fit (the subprocess), fit_loop (Lightning's fit, in-training validation
included), fit_loop_per_step, scoring}, `config` (resolved), `config_file`, `overrides`, `run_dir`.
--heldout sets the sequences validated and scored as held-out; they are removed from the recipe's training list.
--frames-limit N scores only the first N frames of each sequence (quick runs; N >= 3, as the first and last
frames are not scored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "davis2016_scratch.yaml"
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "davis2016"
DEFAULT_FIT_SEQS = ("blackswan", "car-shadow", "scooter-black")
"""Training sequences scored to show fitting (short ones: scoring every checkpoint on them is cheap)."""


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="training steps (also the cosine schedule's T_max)")
    p.add_argument("--every", type=int, default=150, help="keep a checkpoint every this many steps")
    p.add_argument("--image-size", type=int, default=256, help="model input size (a multiple of 32)")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="DAVIS-2016 root (JPEGImages, Annotations)"
    )
    p.add_argument(
        "--heldout", type=_names, help="comma-separated held-out sequences (default: the recipe's)"
    )
    p.add_argument(
        "--fit-seqs", type=_names, default=list(DEFAULT_FIT_SEQS), help="training sequences scored"
    )
    p.add_argument("--frames-limit", type=int, help="score only the first N frames of each sequence")
    p.add_argument("--run-root", type=Path, default=REPO / "runs", help="where the fit writes its run folder")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides for `sam2train fit`")
    args = p.parse_args(argv)
    if not 1 <= args.every <= args.steps:
        p.error(f"--every {args.every}: must be between 1 and --steps ({args.steps})")
    if args.frames_limit is not None and args.frames_limit < 3:
        p.error("--frames-limit: at least 3 (the first and last frames are not scored)")
    return args


def device_name() -> str:
    """`cpu`, or the CUDA device's name slugified (`nvidia-h100-80gb-hbm3`)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def machine_info() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# ------------------------------------------------------------------------------------------------ the run


def fit_overrides(args: argparse.Namespace, version: str) -> list[str]:
    """The `sam2train fit` overrides for this run: data, size, budget, checkpoints, run folder, split."""
    from sam2train.config import load_config

    data = args.data.resolve()
    out = [
        f"data.train_path={data}",
        f"data.val_path={data}",
        f"model.image_size={args.image_size}",
        f"trainer.max_steps={args.steps}",
        f"scheduler.T_max={args.steps}",
        f"checkpoint.every_n_train_steps={args.every}",
        f"logging.root_dir={args.run_root.resolve()}",
        f"logging.version={version}",
    ]
    if args.heldout:
        recipe = load_config(CONFIG).data.train_videos or []
        train = [v for v in recipe if v not in args.heldout]
        out += [f"data.val_videos={json.dumps(args.heldout)}", f"data.train_videos={json.dumps(train)}"]
    return out + list(args.overrides)


def check_split(cfg: Any, fit_seqs: list[str]) -> tuple[list[str], list[str]]:
    """(held-out, fit) sequence lists: the held-out ones are the config's val_videos, never trained on; the fit
    ones must be training sequences."""
    train, heldout = cfg.data.train_videos, cfg.data.val_videos
    if not train or not heldout:
        raise ValueError("the config must list data.train_videos and data.val_videos (a fixed split)")
    if overlap := sorted(set(train) & set(heldout)):
        raise ValueError(f"held-out sequences {overlap} are also in data.train_videos")
    if outside := [s for s in fit_seqs if s not in train]:
        raise ValueError(f"--fit-seqs {outside}: not in data.train_videos {train}")
    return list(heldout), list(fit_seqs)


def save_initial(cfg: Any, path: Path) -> None:
    """The weights `sam2train fit` starts from (same seed, same build) as a checkpoint `predict` reads."""
    import lightning as L
    import torch

    from sam2train.config import to_dict
    from sam2train.train.module import CONFIG_KEY, SAM2LightningModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = SAM2LightningModule(cfg)
    module.build()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), CONFIG_KEY: to_dict(cfg), "global_step": 0}, path)


def run_fit(overrides: list[str]) -> float:
    """`sam2train fit` in a subprocess (its own process: Lightning state, seeds, data workers); wall seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "sam2train.cli", "fit", "--config", str(CONFIG), *overrides]
    print("+", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"sam2train fit failed with exit status {result.returncode}")
    return time.perf_counter() - start


def periodic_checkpoints(folder: Path, steps: int, every: int) -> list[tuple[int, Path]]:
    """(step, path) of the run's periodic checkpoints, by step; names the steps that have none."""
    found = {}
    for path in folder.glob("*.ckpt"):
        if m := re.search(r"step(\d+)", path.stem):
            found[int(m.group(1))] = path
    missing = [s for s in range(every, steps + 1, every) if s not in found]
    if missing:
        print(f"warning: no checkpoint for step(s) {missing} in {folder}", flush=True)
    if not found:
        raise RuntimeError(f"no periodic checkpoint (epoch*-step*.ckpt) in {folder}")
    return sorted(found.items())


# ------------------------------------------------------------------------------------------------ scoring


def _davis_dir(root: Path, kind: str) -> Path:
    """`<root>/<kind>/480p` when present (the DAVIS release layout), else `<root>/<kind>`."""
    return root / kind / "480p" if (root / kind / "480p").is_dir() else root / kind


def stage_sequences(data: Path, seqs: list[str], limit: int | None, work: Path) -> tuple[Path, Path]:
    """(frames root, ground-truth root) holding `<seq>/` folders: the dataset's own, or links to the first
    `limit` frames and masks of each sequence."""
    frames, gt = _davis_dir(data, "JPEGImages"), _davis_dir(data, "Annotations")
    for seq in seqs:
        if not (frames / seq).is_dir() or not (gt / seq).is_dir():
            raise FileNotFoundError(f"sequence {seq}: no {frames / seq} or {gt / seq}")
    if limit is None:
        return frames, gt
    for src, dst in ((frames, work / "frames"), (gt, work / "gt")):
        for seq in seqs:
            (dst / seq).mkdir(parents=True, exist_ok=True)
            for f in sorted((src / seq).iterdir())[:limit]:
                (dst / seq / f.name).symlink_to(f.resolve())
    return work / "frames", work / "gt"


def _summary(scores: dict[str, Any]) -> dict[str, Any]:
    keep = ("J&F", "J", "F", "J_recall", "F_recall", "J_decay", "F_decay")
    per = {k: round(v["J&F"], 6) for k, v in sorted(scores["per_sequence"].items())}
    return {**{k: round(scores[k], 6) for k in keep}, "per_sequence_J&F": per}


def score_predictions(pred: Path, gt: Path, seqs: list[str]) -> dict[str, Any]:
    from sam2train.eval.evaluate import evaluate_folders

    return _summary(evaluate_folders(pred, gt, sequences=seqs))


def predict_and_score(ckpt: Path, seqs: list[str], frames: Path, gt: Path, pred: Path) -> dict[str, Any]:
    """`sam2train predict` from the first ground-truth mask of each sequence, then J&F of the predictions."""
    from sam2train.cli import main as sam2train

    for seq in seqs:
        prompt = sorted((gt / seq).glob("*.png"))[0]
        argv = ["predict", "--checkpoint", str(ckpt), "--frames", str(frames / seq)]
        if sam2train([*argv, "--prompt-mask", str(prompt), "--out", str(pred)]) != 0:
            raise RuntimeError(f"sam2train predict failed on {seq} with {ckpt}")
    return score_predictions(pred, gt, seqs)


def copy_first_frame(seqs: list[str], gt: Path, pred: Path) -> dict[str, Any]:
    """The trivial baseline: the first-frame mask, unchanged, as the prediction for every frame."""
    for seq in seqs:
        masks = sorted((gt / seq).glob("*.png"))
        (pred / seq).mkdir(parents=True, exist_ok=True)
        for mask in masks:
            shutil.copyfile(masks[0], pred / seq / mask.name)
    return score_predictions(pred, gt, seqs)


def score_both(
    score: Callable[[list[str], Path], dict[str, Any]], splits: dict[str, list[str]], work: Path
) -> dict[str, Any]:
    """{"heldout": J&F, "fit": J&F, "detail": {split: summary}} with `score(seqs, pred_dir)` per split."""
    detail = {name: score(seqs, work / name) for name, seqs in splits.items()}
    return {**{name: d["J&F"] for name, d in detail.items()}, "detail": detail}


# ------------------------------------------------------------------------------------------------ report


def summarize_curve(checkpoints: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best held-out checkpoint, mean of the last two checkpoints) from [{step, heldout, fit}, ...]."""
    best = max(checkpoints, key=lambda c: c["heldout"])
    last = checkpoints[-2:]
    mean = {
        "steps": [c["step"] for c in last],
        "heldout": round(sum(c["heldout"] for c in last) / len(last), 6),
        "fit": round(sum(c["fit"] for c in last) / len(last), 6),
    }
    return {k: best[k] for k in ("step", "heldout", "fit")}, mean


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """J&F vs step, held-out and fit, with the copy-first-frame baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [result["initial"], *result["checkpoints"]]
    steps = [p["step"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for split, color in (("heldout", "tab:blue"), ("fit", "tab:orange")):
        ax.plot(
            steps,
            [p[split] for p in points],
            "o-",
            color=color,
            label=f"{split} ({len(result[split + '_sequences'])} seq)",
        )
        base = result["copy_first_frame"][split]
        ax.axhline(base, color=color, ls="--", lw=1, label=f"copy first frame, {split} ({base:.3f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("J&F (DAVIS, full resolution)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"hiera t from random weights, {result['image_size']} px, DAVIS-2016 ({result['device']}, "
        f"{result['wall_time_s']['total'] / 60:.0f} min)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything: initial weights, fit, scoring; returns the result written to JSON."""
    from sam2train.config import load_config, to_dict

    start = time.perf_counter()
    device = device_name()
    machine = machine_info()
    version = f"learning_{device}_{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = fit_overrides(args, version)
    cfg = load_config(CONFIG, overrides)  # a bad key or value stops here, before anything runs
    heldout, fit = check_split(cfg, args.fit_seqs)
    run_dir = Path(cfg.logging.root_dir) / cfg.logging.name / version
    initial_ckpt = run_dir / "initial.ckpt"
    save_initial(cfg, initial_ckpt)
    fit_seconds = run_fit(overrides)
    ckpts = periodic_checkpoints(run_dir / "checkpoints", args.steps, args.every)

    score_start = time.perf_counter()
    splits = {"heldout": heldout, "fit": fit}
    with tempfile.TemporaryDirectory(prefix="learning_curve_") as tmp:
        work = Path(tmp)
        frames, gt = stage_sequences(args.data, heldout + fit, args.frames_limit, work / "data")
        baseline = score_both(lambda s, out: copy_first_frame(s, gt, out), splits, work / "copy")
        scored = []
        for step, path in [(0, initial_ckpt), *ckpts]:
            entry = score_both(
                lambda s, out, p=path: predict_and_score(p, s, frames, gt, out), splits, work / f"step{step}"
            )
            scored.append({"step": step, **entry, "checkpoint": str(path)})
            print(f"step {step}: held-out J&F {entry['heldout']:.4f}, fit J&F {entry['fit']:.4f}", flush=True)
    best, mean_last_two = summarize_curve(scored[1:])
    final_metrics = run_dir / "final_metrics.json"
    fit_report = json.loads(final_metrics.read_text()) if final_metrics.is_file() else {}
    loop_seconds = fit_report.get("wall_time_s")
    end = time.perf_counter()
    return {
        "device": device,
        "machine": machine,
        "image_size": args.image_size,
        "steps": args.steps,
        "every": args.every,
        "frames_limit": args.frames_limit,
        "heldout_sequences": heldout,
        "fit_sequences": fit,
        "initial": scored[0],
        "copy_first_frame": baseline,
        "checkpoints": scored[1:],
        "best": best,
        "mean_last_two": mean_last_two,
        "in_training_validation": fit_report.get("validation_history"),
        "wall_time_s": {
            "total": round(end - start, 1),
            "fit": round(fit_seconds, 1),
            "fit_loop": loop_seconds,
            "fit_loop_per_step": round(loop_seconds / args.steps, 3) if loop_seconds else None,
            "scoring": round(end - score_start, 1),
        },
        "run_dir": str(run_dir),
        "config_file": str(CONFIG.relative_to(REPO)),
        "overrides": overrides,
        "config": to_dict(cfg),
    }


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # config, split, data or a failed command
        raise SystemExit(f"learning_curve: error: {exc}") from exc
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"learning_{result['device']}.json"
    out.write_text(json.dumps(result, indent=2))
    plot_curves(result, out.with_suffix(".png"))
    init, base, mean = result["initial"], result["copy_first_frame"], result["mean_last_two"]
    print(
        f"held-out J&F: initial {init['heldout']:.3f}, copy first frame {base['heldout']:.3f}, "
        f"mean of the last two checkpoints {mean['heldout']:.3f} (fit {init['fit']:.3f} -> {mean['fit']:.3f})"
    )
    print(f"written {out} and {out.with_suffix('.png')}")
    return out


if __name__ == "__main__":
    main()
