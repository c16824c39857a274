"""The sections of benchmarks/gpu_suite.py, one function each, run in a child process by the suite.

Each takes (args, sizes, work folder, part) and records its figures with `part.set(...)` as it goes, so what it
measured survives its own failure or the suite's time box. `sizes` holds model, size, frames, objects, steps,
warmup and device (see gpu_suite.GPU / TOY); `work` is shared by the sections (the demo data is made once).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RECIPES = HERE.parent / "src" / "sam2train" / "recipes"
DATA_KEYS_NULL = ("format", "images_root", "train_videos", "val_videos", "train")
"""Recipe data keys pointed away from the recipe's own data (the demo data takes their place)."""


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def demo_data(sizes: dict[str, Any], work: Path) -> Path:
    """The suite's demo dataset (`sam2train demo-data`), made once in `work`."""
    from gpu_suite import DEMO_GPU, DEMO_TOY

    out = work / "demo"
    if not (out / "train").is_dir():
        flags = DEMO_TOY if sizes["device"] == "cpu" else DEMO_GPU
        subprocess.run([sys.executable, "-m", "sam2train.cli", "demo-data", str(out), *flags], check=True)
    return out


def metrics_columns(path: Path) -> dict[str, list[float]]:
    """A Lightning metrics.csv as column -> its non-empty values, in order."""
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in (rows[0] if rows else {})}


# --------------------------------------------------------------------------------------------- environment


def environment(args: argparse.Namespace, sizes: dict[str, Any], work: Path, part: Any) -> None:
    import importlib.metadata as md
    import platform

    versions = {}
    for name in ("sam2", "sam2train", "lightning", "hydra-core", "omegaconf", "tensordict", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    part.set(python=platform.python_version(), versions=versions, cuda_available=cuda,
             cudnn=torch.backends.cudnn.version() if cuda else None)  # fmt: skip
    if not cuda:
        part.set(note="no CUDA device: the GPU checks are skipped", matmul_cpu_gflops=matmul_rate("cpu", 256))
        return
    props = torch.cuda.get_device_properties(0)
    part.set(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
             memory_gb=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    part.set(bf16_matmul_tflops=matmul_rate("cuda", 8192) / 1000)
    host = torch.empty(256 * 2**20, dtype=torch.uint8, pin_memory=True)
    dev = host.to("cuda", non_blocking=True)
    sync()
    start = time.perf_counter()
    for _ in range(10):
        dev.copy_(host, non_blocking=True)
    sync()
    part.set(pinned_h2d_gb_s=10 * host.numel() / (time.perf_counter() - start) / 1e9)
    weight = torch.nn.Parameter(torch.randn(1024, 1024, device="cuda"))
    opt = torch.optim.AdamW([weight], fused=True)
    weight.sum().backward()
    opt.step()
    part.set(fused_adamw=bool(torch.isfinite(weight).all()))


def matmul_rate(device: str, n: int) -> float:
    """GFLOP/s of an n x n x n matrix product (bf16 on CUDA, fp32 on CPU), the mean of 10 after 3 warm-ups."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * n**3 / (time.perf_counter() - start) / 1e9


# --------------------------------------------------------------------------------------------- recipes


def fit_overrides(sizes: dict[str, Any], data: Path, root: Path, version: str) -> list[str]:
    """`fit` overrides of a 2-step bf16-mixed run of any recipe on the demo data, random weights."""
    toy = sizes["device"] == "cpu"
    return [
        f"data.train_path={data / 'train'}", f"data.val_path={data / 'val'}",
        *[f"data.{key}=null" for key in DATA_KEYS_NULL], "data.val_clip_length=2",
        f"data.num_workers={0 if toy else 4}", *(["data.clip_length=2"] if toy else []),
        f"model.config={sizes['model']}", f"model.image_size={sizes['size']}", "model.checkpoint=null",
        "trainer.precision=bf16-mixed", "trainer.devices=1", "trainer.max_epochs=1", "trainer.max_steps=2",
        "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.accumulate_grad_batches=1",
        "trainer.log_every_n_steps=1", f"logging.root_dir={root}", f"logging.version={version}",
        "logging.loggers=[csv]", "logging.progress_bar=none", "logging.viz_every_n_epochs=0",
    ]  # fmt: skip


def recipes(args: argparse.Namespace, sizes: dict[str, Any], work: Path, part: Any) -> None:
    from sam2train.cli import main as cli_main
    from sam2train.config import load_config

    data = demo_data(sizes, work)
    found: dict[str, Any] = {}
    for recipe in sorted(RECIPES.glob("*.yaml")):
        name = recipe.stem
        overrides = fit_overrides(sizes, data, work / "runs", name)
        gc.collect()  # the previous fit's trainer and model, so that its memory is not in this one's peak
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            code = cli_main(["fit", "--config", str(recipe), *overrides])
            error = None if code == 0 else f"sam2train fit returned {code}"
        except Exception as exc:  # one recipe's failure is recorded, the next runs
            error = f"{type(exc).__name__}: {exc}"[:500]
        record: dict[str, Any] = {"ok": error is None, "seconds": round(time.perf_counter() - start, 2)}
        if error:
            record["error"] = error
        cfg = load_config(recipe)
        logged = metrics_columns(work / "runs" / cfg.logging.name / name / "metrics.csv")
        record["train_total"] = logged.get("train/total", [])
        record["skipped_steps"] = logged.get("train/skipped_steps", [None])[-1]
        if torch.cuda.is_available():
            record["max_memory_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        found[name] = record
        part.set(recipes=found, precision="bf16-mixed", model=sizes["model"], image_size=sizes["size"])


# --------------------------------------------------------------------------------------------- train step


def train_step(args: argparse.Namespace, sizes: dict[str, Any], work: Path, part: Any) -> None:
    """Each side alone in a process of its own (train_step.py --side-child): its steps and its memory peak."""
    import train_step as ts

    points: dict[str, Any] = {}
    few, many = sizes["objects"]
    plan = [(few, ("ours", "meta")), (many, ("ours", "chunked", "lean", "meta"))]
    for objects, names in plan:
        s = ts.Settings(
            model=sizes["model"], image_size=sizes["size"], frames=sizes["frames"], objects=objects,
            prompt="mask", precision="bf16", steps=sizes["steps"], warmup=sizes["warmup"], device=sizes["device"],
        )  # fmt: skip
        point = points.setdefault(f"N{objects}", {})
        for name in names:
            variant = replace(s, **ts.OUR_VARIANTS.get(name, {}))
            cmd = [sys.executable, ts.__file__, "--side-child", name, *ts.settings_argv(variant)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                point[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                point[name] = {"error": proc.stderr[-1500:]}
            part.set(points=points, settings={k: v for k, v in asdict(s).items() if k != "trainable"})
    for point in points.values():
        meta = point.get("meta", {})
        for name, fig in point.items():
            if name != "meta" and "step_s" in fig and "step_s" in meta:
                fig["speed_over_meta"] = fig["frames_per_s"] / meta["frames_per_s"]
                fig["peak_memory_over_meta"] = fig["memory"]["peak_mb"] / meta["memory"]["peak_mb"]
    part.set(points=points)


# --------------------------------------------------------------------------------------------- feature cache


def feature_cache(args: argparse.Namespace, sizes: dict[str, Any], work: Path, part: Any) -> None:
    import feature_cache as fc

    toy = sizes["device"] == "cpu"
    data = demo_data(sizes, work)
    out = work / "feature_cache.json"
    argv = [
        "--data", str(data / "train"), "--model", sizes["model"], "--image-size", str(sizes["size"]),
        "--clip-length", str(2 if toy else 8), "--max-clips", str(1 if toy else 3), "--epochs", str(2 if toy else 3),
        "--device", sizes["device"], "--cache-dir", str(work / "feature_cache"), "--out", str(out),
    ]  # fmt: skip
    result = fc.main(argv)
    keep = ("clips", "frames_per_epoch", "plain", "cache", "floor", "cache_stats", "summary")
    part.set(**{k: result[k] for k in keep})


# --------------------------------------------------------------------------------------------- predict


def predict(args: argparse.Namespace, sizes: dict[str, Any], work: Path, part: Any) -> None:
    """Our `predict` (predict_video, PNGs written) and Meta's SAM2VideoPredictor (masks to the CPU) on one demo
    video, same random weights; each run twice, the second timed."""
    from sam2train.config import ModelConfig
    from sam2train.eval.predict import open_frames, predict_video
    from sam2train.eval.prompts import model_prompts
    from sam2train.model import build_model

    data = demo_data(sizes, work)
    video = sorted((data / "val" / "JPEGImages").iterdir())[0]
    first = sorted((data / "val" / "Annotations" / video.name).glob("*.png"))[0]
    device = sizes["device"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(config=sizes["model"], image_size=sizes["size"], checkpoint=None), device
        )
    model.eval()  # no post-processing on either side (the builders' dynamic multimask, hole filling)
    flags = argparse.Namespace(prompt_mask=str(first), objects=None, points=None, box=None)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    figures: dict[str, Any] = {"video": video.name, "image_size": sizes["size"]}
    for _ in range(2):
        source = open_frames(video)
        ids, prompts = model_prompts(flags, source.size, model.image_size)
        sync()
        start = time.perf_counter()
        with autocast:
            count = predict_video(model, source, ids, prompts, work / "predict", None)
        sync()
        seconds = time.perf_counter() - start
    figures["frames"] = count
    figures["ours"] = {"seconds": seconds, "frames_per_s": count / seconds}
    part.set(**figures)
    meta = meta_predictor(model, sizes)
    for _ in range(2):
        seconds, count = run_meta(meta, video, first, ids, autocast)
    figures["meta"] = {"seconds": seconds, "frames_per_s": count / seconds}
    figures["ours_over_meta"] = figures["ours"]["frames_per_s"] / figures["meta"]["frames_per_s"]
    part.set(**figures)


def meta_predictor(model: torch.nn.Module, sizes: dict[str, Any]) -> torch.nn.Module:
    """Meta's SAM2VideoPredictor of the same model config and weights, without its post-processing."""
    from hydra.utils import instantiate

    from sam2train.model.build import load_model_config

    cfg = load_model_config(sizes["model"], sizes["size"])
    cfg._target_ = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = instantiate(cfg, _recursive_=True)
    predictor.load_state_dict(model.state_dict())
    return predictor.to(sizes["device"]).eval()


def run_meta(
    predictor: torch.nn.Module, video: Path, first: Path, ids: list[int], autocast: Any
) -> tuple[float, int]:
    """init_state, one mask per object on frame 0, propagate; masks > 0 to the CPU. -> (seconds, frames)."""
    import numpy as np
    from PIL import Image

    labels = np.array(Image.open(first))
    sync()
    start = time.perf_counter()
    count = 0
    with torch.inference_mode(), autocast, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hole filling without the compiled sam2._C extension
        state = predictor.init_state(str(video))
        for obj in ids:
            predictor.add_new_mask(state, 0, obj, torch.from_numpy(labels == obj))
        for _, _, logits in predictor.propagate_in_video(state):
            (logits > 0).cpu()
            count += 1
    sync()
    return time.perf_counter() - start, count


# --------------------------------------------------------------------------------------------- DAVIS


def davis(args: argparse.Namespace, sizes: dict[str, Any], work: Path, part: Any) -> None:
    """The DAVIS-2016 scratch recipe at 512 px in bf16 until the suite's time box ends it (toy: 2 steps on the
    demo data, the recipe's video split dropped); figures read from its metrics.csv as it goes."""
    toy = sizes["device"] == "cpu"
    root = Path(args.davis)
    if toy and not (root / "JPEGImages").is_dir():
        root = demo_data(sizes, work) / "train"
    if not (root / "JPEGImages").is_dir():
        part.set(status="skipped", note=f"no DAVIS-2016 folder at {root} (pass --davis)")
        return
    overrides = [
        f"data.train_path={root}", f"data.val_path={root}", f"data.num_workers={0 if toy else 8}",
        f"model.image_size={64 if toy else 512}", "trainer.precision=bf16-mixed", "trainer.devices=1",
        "trainer.log_every_n_steps=10", f"logging.root_dir={work / 'davis_runs'}", "logging.version=run",
        "logging.loggers=[csv]", "logging.progress_bar=none", "logging.viz_every_n_epochs=0",
    ]  # fmt: skip
    if toy:
        overrides += ["data.train_videos=null", "data.val_videos=null", "data.clip_length=2",
                      "data.val_clip_length=2", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
                      "trainer.limit_val_batches=1", f"model.config={sizes['model']}"]  # fmt: skip
    cmd = [sys.executable, "-m", "sam2train.cli", "fit", "--config", "davis2016_scratch", *overrides]
    part.set(
        command=" ".join(cmd[2:]), data=str(root), image_size=64 if toy else 512, ends_at_time_box=not toy
    )
    log = (work / "davis_fit.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    metrics = work / "davis_runs" / "davis2016_scratch" / "run" / "metrics.csv"
    while proc.poll() is None:
        time.sleep(5 if not toy else 1)
        davis_figures(metrics, time.perf_counter() - start, part)
    davis_figures(metrics, time.perf_counter() - start, part)
    log.close()
    if proc.returncode != 0:
        part.set(status="failed", error=(work / "davis_fit.log").read_text()[-2000:])


def davis_figures(metrics: Path, seconds: float, part: Any) -> None:
    logged = metrics_columns(metrics)
    steps = logged.get("step", [])
    figures: dict[str, Any] = {"seconds": round(seconds, 1), "steps": int(steps[-1]) + 1 if steps else 0}
    figures["steps_per_s"] = figures["steps"] / seconds
    total = logged.get("train/total", [])
    if total:
        figures.update(first_train_total=total[0], last_train_total=total[-1],
                       median_last_10=statistics.median(total[-10:]))  # fmt: skip
    for key in ("val/J&F", "val/jf", "val/J_and_F"):
        if logged.get(key):
            figures["last_val_jf"] = logged[key][-1]
    part.set(**figures)
