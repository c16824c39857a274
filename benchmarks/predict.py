"""`sam2train predict` against Meta's `SAM2VideoPredictor`: the same frames, weights and mask prompts, each side
a whole child process, alternated, both writing the same palette PNGs.

    python benchmarks/predict.py [--sizes 256,512,1024] [--objects 1,3,16] [--frames 30,300]
        [--points SxNxL,...] [--repeats 1] [--device cpu|cuda] [--threads 1] [--offload]
        [--ours-args="--object-chunk 4"] [--bf16 meta|both|none] [--timeout-s 3600]
        [--data ../shared/data/davis2016] [--sequence car-shadow] [--work runs/predict_bench]
        [--out benchmarks/results/predict_<device>.json] [--toy]

Points are every combination of --sizes (model input S), --objects (N) and --frames (L), or the --points list.
Weights: a random hiera t (`build_sam2` after torch.manual_seed(0)) saved once as Meta's `{"model": state_dict}`;
ours loads it with `sam2train predict --checkpoint W.pt --model-config sam2.1_hiera_t --image-size S`, Meta's side
with `build_sam2_video_predictor(..., hydra_overrides_extra=["++model.image_size=S"])`, both with their default
post-processing. Frames: L JPEGs `%05d.jpg` ping-ponged from a DAVIS-2016 sequence (the demo-data generator's
frames when the data is absent), cached in the work folder. Prompt: the sequence's first ground-truth mask
(object 1) plus N-1 discs and rectangles on a grid (ids 2..N), every object non-empty at S.

Per point, `--repeats` rounds, Meta first in rounds 1, 3, ... and ours first in 2, 4, .... A child stamps
time.time() when its model is built and after every PNG it writes, and reports: start-up (the parent's launch to
the first PNG: interpreter, imports, model build, frame loading, the first frame), s/frame ((last - first) /
(L - 1)), s/frame from ready ((last PNG - model built) / L), total (launch to the last PNG), peak RSS (VmHWM;
ru_maxrss would start at the parent's peak, which a child spawned by vfork + exec inherits), system and user CPU
time, and on CUDA `max_memory_allocated`. s/frame leaves out what a side does before its first PNG (Meta loads
every frame there, in init_state), so s/frame from ready, which counts it, is the fairer figure. A point keeps the medians over rounds, ours/Meta ratios and the
fraction of pixels where ours' and Meta's PNGs differ (last round). Meta's side runs under
torch.inference_mode() and, on CUDA, bf16 autocast as its README does; ours runs
`sam2train.cli.main(["predict", ...])` as a user gets it (bf16 autocast on CUDA by default, `--precision`).
A side that fails or outlives --timeout-s is recorded as such and the run goes on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "davis2016"
SIDES = ("meta", "ours")
MODEL_CONFIG = "sam2.1_hiera_t"
META_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TOY = {"sizes": [128], "objects": [1, 2], "frames": [4, 8], "repeats": 1, "timeout_s": 300.0}
"""`--toy`: four small points, one round (tests/test_benchmark_predict.py)."""
FIGURES = (
    "import_s",
    "model_ready_s",
    "startup_s",
    "s_per_frame",
    "s_per_frame_from_ready",
    "total_s",
    "wall_s",
    "peak_rss_mb",
    "cuda_peak_mb",
    "sys_s",
    "user_s",
)
"""Per-run figures whose medians over rounds a point keeps."""


# --------------------------------------------------------------------------------------------- inputs


def make_weights(work: Path) -> Path:
    """Random hiera t (seed 0) in Meta's checkpoint format `{"model": state_dict}`, written once."""
    path = work / "hiera_t_seed0.pt"
    if path.is_file():
        return path
    import warnings

    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hole filling without the compiled sam2._C
        model = build_sam2(META_CONFIG, None, device="cpu")
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict()}, tmp)
    tmp.replace(path)
    return path


def source_sequence(data: Path, sequence: str, work: Path) -> tuple[str, list[Path], Path]:
    """(name, its JPEG frames, its first ground-truth PNG): `sequence` of the DAVIS-2016 folder `data`, else
    (no such folder) the one video of a demo-data set written to the work folder (480x854, one object)."""
    jpegs = data / "JPEGImages" / "480p" / sequence
    if jpegs.is_dir():
        first = data / "Annotations" / "480p" / sequence / "00000.png"
        return sequence, sorted(jpegs.glob("*.jpg")), first
    from sam2train.data.demo import write_demo_dataset

    demo = work / "demo"
    if not (demo / "train").is_dir():
        write_demo_dataset(demo, videos=1, frames=24, size=(480, 854), objects=1, seed=0)
    video = sorted((demo / "train" / "JPEGImages").iterdir())[0]
    return video.name, sorted(video.glob("*.jpg")), demo / "train" / "Annotations" / video.name / "00000.png"


def make_frames(name: str, jpegs: list[Path], length: int, work: Path) -> Path:
    """`work/frames/<name>_<L>/%05d.jpg`: the sequence played forward, backward, forward ... for L frames
    (files copied byte for byte, so both sides decode the same JPEGs); made once."""
    out = work / "frames" / f"{name}_{length}"
    if out.is_dir():
        return out
    n = len(jpegs)
    period = max(2 * n - 2, 1)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i in range(length):
        j = i % period
        shutil.copyfile(jpegs[j if j < n else period - j], tmp / f"{i:05d}.jpg")
    tmp.replace(out)
    return out


def blob_masks(size: tuple[int, int], count: int) -> list[Any]:
    """`count` extra objects [H, W] bool: discs and rectangles (alternating) centred in the cells of a grid of
    ceil(sqrt(count)) columns, each at most an eighth of the frame's width and height."""
    import math

    import numpy as np

    h, w = size
    cols = math.ceil(math.sqrt(count)) if count else 1
    rows = math.ceil(count / cols) if count else 1
    cw, ch = w / cols, h / rows
    half_w, half_h = min(cw / 4, w / 16), min(ch / 4, h / 16)
    yy, xx = np.mgrid[:h, :w]
    masks = []
    for k in range(count):
        cx, cy = (k % cols + 0.5) * cw, (k // cols + 0.5) * ch
        if k % 2:
            masks.append((abs(xx - cx) <= half_w) & (abs(yy - cy) <= half_h))
        else:
            masks.append(((xx - cx) / half_w) ** 2 + ((yy - cy) / half_h) ** 2 <= 1)
    return masks


def make_prompt(name: str, first: Path, objects: int, sizes: list[int], work: Path) -> Path:
    """`work/prompts/<name>_n<N>.png`: the ground truth's first object as id 1, then N-1 blobs (ids 2..N) drawn
    over it. Raises ValueError when an object has no pixel left at one of the model `sizes`."""
    import numpy as np

    from sam2train import viz
    from sam2train.data.labels import label_ids, read_labels

    gt = read_labels(first)
    labels = np.zeros(gt.shape, dtype=np.uint8)
    labels[gt == label_ids(gt)[0]] = 1
    for k, mask in enumerate(blob_masks(gt.shape, objects - 1), start=2):
        labels[mask] = k
    path = viz.save_palette_png(work / "prompts" / f"{name}_n{objects}.png", labels)
    _check_prompt(path, gt.shape, sizes)
    return path


def _check_prompt(path: Path, size: tuple[int, int], sizes: list[int]) -> None:
    from sam2train.eval.prompts import model_prompts, vanished_objects

    flags = argparse.Namespace(prompt_mask=str(path), objects=None, points=None, box=None)
    for s in sizes:
        gone = vanished_objects(*model_prompts(flags, size, s))
        if gone:
            raise ValueError(f"{path}: object(s) {gone} have no pixel at {s} px; use fewer --objects")


# --------------------------------------------------------------------------------------------- children


def stamped(write: Callable[..., Any], stamps: list[float]) -> Callable[..., Any]:
    """`write` (sam2train.viz.save_palette_png) that appends time.time() to `stamps` after each file."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = write(*args, **kwargs)
        stamps.append(time.time())
        return out

    return wrapper


def run_ours(args: argparse.Namespace, autocast: Any, ready: list[float]) -> None:
    """`sam2train predict` in this process, stamping `ready` when its model is loaded; SystemExit when it
    returns an error code."""
    import sam2train.eval.export as export
    from sam2train.cli import main

    export.load_for_inference = stamped(export.load_for_inference, ready)  # cmd_predict imports it per call

    argv = [
        "predict", "--checkpoint", str(args.weights), "--model-config", MODEL_CONFIG,
        "--image-size", str(args.image_size), "--device", args.device, "--frames", str(args.frames_dir),
        "--prompt-mask", str(args.prompt), "--out", str(args.out_dir),
        *(["--offload"] if args.offload else []), *shlex.split(args.ours_args),
    ]  # fmt: skip
    with autocast:
        rc = main(argv)
    if rc:
        raise SystemExit(f"sam2train predict {shlex.join(argv)} returned {rc}")


def run_meta(args: argparse.Namespace, autocast: Any, ready: list[float]) -> None:
    """Meta's predictor: init_state, one `add_new_mask` per object on frame 0, propagate; each frame's label
    map (the object of the highest logit where it is > 0, else 0) written as ours writes it."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image
    from sam2.build_sam import build_sam2_video_predictor

    from sam2train import viz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hole filling without the compiled sam2._C
        predictor = build_sam2_video_predictor(
            META_CONFIG,
            str(args.weights),
            device=args.device,
            hydra_overrides_extra=[f"++model.image_size={args.image_size}"],
        )
    ready.append(time.time())
    labels = np.array(Image.open(args.prompt))
    ids = [int(i) for i in np.unique(labels) if i != 0]
    out = args.out_dir / args.frames_dir.name
    with torch.inference_mode(), autocast:
        state = predictor.init_state(
            str(args.frames_dir), offload_video_to_cpu=args.offload, offload_state_to_cpu=args.offload
        )
        for obj in ids:
            predictor.add_new_mask(state, 0, obj, torch.from_numpy(labels == obj))
        for index, obj_ids, logits in predictor.propagate_in_video(state):
            best, which = logits[:, 0].float().max(0)
            table = torch.tensor(obj_ids, dtype=torch.uint8, device=which.device)
            label_map = torch.where(best > 0, table[which], 0).cpu().numpy().astype(np.uint8)
            viz.save_palette_png(out / f"{index:05d}.png", label_map)


def child(args: argparse.Namespace) -> None:
    """One side, end to end, in this process; its figures as JSON to `args.result`."""
    import resource

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    imported = time.time()
    import sam2train.viz as viz

    stamps: list[float] = []
    ready: list[float] = []  # when the model is built and loaded
    viz.save_palette_png = stamped(viz.save_palette_png, stamps)
    bf16 = args.device == "cuda" and args.bf16 in ("both", args.child)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)
    (run_ours if args.child == "ours" else run_meta)(args, autocast, ready)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sys.path.insert(0, str(HERE))  # train_step.py beside this file, imported only now: no weight on the run
    import train_step as ts

    figures: dict[str, Any] = {
        "frames": len(stamps),
        "pngs": sum(1 for _ in args.out_dir.rglob("*.png")),
        "import_s": imported - args.launched,
        "startup_s": stamps[0] - args.launched if stamps else None,
        "s_per_frame": (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None,
        "total_s": stamps[-1] - args.launched if stamps else None,
        "model_ready_s": ready[0] - args.launched if ready else None,
        "s_per_frame_from_ready": (stamps[-1] - ready[0]) / len(stamps) if ready and stamps else None,
        "peak_rss_mb": ts._proc_status_mb("VmHWM"),
        "sys_s": usage.ru_stime,
        "user_s": usage.ru_utime,
        "torch_threads": torch.get_num_threads(),
        "bf16_autocast": bf16,
    }
    if args.device == "cuda":
        figures["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    args.result.write_text(json.dumps(figures) + "\n")


def launch(
    side: str, point: dict[str, Any], args: argparse.Namespace, inputs: dict[str, Any]
) -> dict[str, Any]:
    """Run one side of `point` in a child process (out folder emptied first); its figures, with the parent's
    wall time and the 1-minute load at launch, or {"timed_out": ...} / {"error": ...}."""
    tag = f"{point['size']}x{point['objects']}x{point['frames']}"
    out_dir = args.work / "out" / tag / side
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    result, log = out_dir.with_suffix(".json"), out_dir.with_suffix(".log")
    result.unlink(missing_ok=True)
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env = {**os.environ, **(threads if args.threads else {})}
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    launched = time.time()
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", side, f"--launched={launched!r}",
        f"--weights={inputs['weights']}", f"--frames-dir={inputs['frames'][point['frames']]}",
        f"--prompt={inputs['prompts'][point['objects']]}", f"--out-dir={out_dir}", f"--result={result}",
        f"--image-size={point['size']}", f"--device={args.device}", f"--threads={args.threads or 0}",
        f"--bf16={args.bf16}", f"--ours-args={args.ours_args}", *(["--offload"] if args.offload else []),
    ]  # fmt: skip
    base = {"side": side, "load_avg_1m": load, "log": str(log)}
    try:
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "timed_out": True, "timeout_s": args.timeout_s}
    wall = time.time() - launched
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        return {**base, "error": f"exit code {proc.returncode}", "log_tail": tail, "wall_s": wall}
    return {**base, **json.loads(result.read_text()), "wall_s": wall}


# --------------------------------------------------------------------------------------------- a point


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side over its rounds: medians of FIGURES over the rounds that finished, frames written (the fewest),
    the rounds themselves; when none finished, why (timed out / error)."""
    done = [r for r in runs if "error" not in r and not r.get("timed_out")]
    out: dict[str, Any] = {"runs": runs, "rounds_done": len(done)}
    if not done:
        first = runs[0]
        out["timed_out" if first.get("timed_out") else "error"] = first.get("timeout_s", first.get("error"))
        return out
    out["frames"] = min(r["frames"] for r in done)
    for key in FIGURES:
        values = [r[key] for r in done if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    return out


def ratios(ours: dict[str, Any], meta: dict[str, Any]) -> dict[str, float]:
    """ours / Meta of each figure both sides have (> 1: ours slower or larger)."""
    keys = (
        "s_per_frame",
        "s_per_frame_from_ready",
        "startup_s",
        "total_s",
        "peak_rss_mb",
        "cuda_peak_mb",
        "sys_s",
    )
    return {k: ours[k] / meta[k] for k in keys if ours.get(k) is not None and meta.get(k)}


def png_agreement(ours_dir: Path, meta_dir: Path) -> dict[str, Any]:
    """The fraction of pixels (over all frames both wrote) whose object id differs, and the frames that differ."""
    import numpy as np
    from PIL import Image

    names = sorted(p.name for p in meta_dir.glob("*.png") if (ours_dir / p.name).is_file())
    differing = total = frames = 0
    for name in names:
        a, b = np.array(Image.open(ours_dir / name)), np.array(Image.open(meta_dir / name))
        if a.shape != b.shape:
            raise ValueError(f"{ours_dir / name} is {a.shape}, {meta_dir / name} {b.shape}")
        d = int((a != b).sum())
        differing, total, frames = differing + d, total + a.size, frames + (d > 0)
    return {
        "frames_compared": len(names),
        "frames_differing": frames,
        "differing_pixel_fraction": differing / total if total else None,
    }


def measure_point(point: dict[str, Any], args: argparse.Namespace, inputs: dict[str, Any]) -> dict[str, Any]:
    """`args.repeats` rounds of both sides (Meta first in odd rounds), then medians, ratios and PNG agreement."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for r in range(args.repeats):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            print(f"  round {r + 1} {side} ...", flush=True)
            runs[side].append(launch(side, point, args, inputs))
    row: dict[str, Any] = {**point, **{side: summarize(runs[side]) for side in SIDES}}
    ours, meta = row["ours"], row["meta"]
    row["ratios"] = ratios(ours, meta) if ours["rounds_done"] and meta["rounds_done"] else {}
    tag = f"{point['size']}x{point['objects']}x{point['frames']}"
    seq = inputs["frames"][point["frames"]].name
    out = args.work / "out" / tag
    row["agreement"] = png_agreement(out / "ours" / seq, out / "meta" / seq)
    return row


# --------------------------------------------------------------------------------------------- report


SIDE_COLUMNS = (("start s", "startup_s", 8, 2), ("s/frame", "s_per_frame", 8, 3),
                ("s/fr rdy", "s_per_frame_from_ready", 8, 3), ("total s", "total_s", 8, 1),
                ("RSS MB", "peak_rss_mb", 7, 0), ("cudaMB", "cuda_peak_mb", 7, 0), ("sys s", "sys_s", 6, 1))  # fmt: skip
"""The table's per-side columns: (title, figure, width, decimals)."""
RATIO_COLUMNS = (("x s/fr", "s_per_frame", 7), ("x rdy", "s_per_frame_from_ready", 6), ("x sys", "sys_s", 6))


def format_table(result: dict[str, Any]) -> str:
    """One line per point and side; ratios ours/Meta on ours' line; PNG disagreement on Meta's."""
    mem_key = "peak_rss_mb" if result["settings"]["device"] == "cpu" else "cuda_peak_mb"
    titles = [f"{t:>{w}}" for t, _, w, _ in SIDE_COLUMNS] + [f"{t:>{w}}" for t, _, w in RATIO_COLUMNS]
    lines = [f"{'S':>5} {'N':>3} {'L':>4} {'side':<5} {' '.join(titles)} {'x mem':>6} {'diff px':>8}"]
    for r in result["points"]:
        for side in SIDES:
            o = r[side]
            head = f"{r['size']:>5} {r['objects']:>3} {r['frames']:>4} {side:<5}"
            if not o["rounds_done"]:
                why = f"timed out ({o['timed_out']} s)" if "timed_out" in o else f"failed: {o['error']}"
                lines.append(f"{head} {why}")
                continue
            q = r["ratios"] if side == "ours" else {}
            cells = [_cell(o, key, w, places) for _, key, w, places in SIDE_COLUMNS]
            cells += [_cell(q, key, w, 2) for _, key, w in RATIO_COLUMNS] + [_cell(q, mem_key, 6, 2)]
            diff = r["agreement"]["differing_pixel_fraction"] if side == "meta" else None
            cells.append(f"{diff:>8.1e}" if diff is not None else f"{'':>8}")
            lines.append(f"{head} {' '.join(cells)}")
    lines.append(
        "s/fr rdy: (last PNG - model built) / L, frame loading and encoding included; x: ours over Meta "
        "(>1: ours slower / larger); x mem: peak RSS (CPU) or max_memory_allocated (CUDA); diff px: fraction "
        "of PNG pixels where the two differ"
    )
    return "\n".join(lines)


def _cell(figures: dict[str, Any], key: str, width: int, places: int) -> str:
    value = figures.get(key)
    return f"{value:>{width}.{places}f}" if value is not None else f"{'-':>{width}}"


def header(args: argparse.Namespace, points: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """What every result file starts with (train_step.py's environment: versions, machine, load average)."""
    import train_step as ts

    return {
        "benchmark": "predict",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": ts.device_slug(args.device),
        "settings": {
            "device": args.device,
            "model": MODEL_CONFIG,
            "threads": args.threads,
            "repeats": args.repeats,
            "offload": args.offload,
            "ours_args": args.ours_args,
            "bf16": args.bf16,
            "timeout_s": args.timeout_s,
            "sequence": name,
            "points": [_tag(p) for p in points],
        },  # fmt: skip
        "environment": ts.environment(args.device),
    }


def _tag(point: dict[str, Any]) -> str:
    return f"{point['size']}x{point['objects']}x{point['frames']}"


# --------------------------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    """`256,512` -> [256, 512] (order kept, duplicates dropped)."""
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _points(text: str) -> list[tuple[int, int, int]]:
    """`256x1x30,512x3x300` -> [(S, N, L)]."""
    try:
        points = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        points = []
    if not points or any(len(p) != 3 or min(p) < 1 for p in points):
        raise argparse.ArgumentTypeError(f"expected SxNxL points such as 256x1x30,512x3x300, got {text!r}")
    return points  # type: ignore[return-value]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=_ints, default="256,512,1024", help="model input sizes S, comma-separated")
    p.add_argument("--objects", type=_ints, default="1,3,16", help="object counts N, comma-separated")
    p.add_argument("--frames", type=_ints, default="30,300", help="video lengths L, comma-separated")
    p.add_argument("--points", type=_points, help="SxNxL points instead of the grid, e.g. 256x1x30,512x3x300")
    p.add_argument(
        "--repeats", type=int, default=1, help="rounds per point, alternating which side goes first"
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, help="torch / OpenMP threads in both children (default: 1 on CPU)")
    p.add_argument(
        "--offload", action="store_true", help="both sides: Meta's offload_*_to_cpu, ours --offload"
    )
    p.add_argument(
        "--ours-args", default="", help='extra flags for ours, e.g. --ours-args="--object-chunk 4"'
    )
    p.add_argument(
        "--bf16",
        default="meta",
        choices=("meta", "both", "none"),
        help="bf16 autocast around a side on CUDA: Meta's (default), both, none (ours autocasts on CUDA itself "
        "unless --ours-args=--precision=fp32)",
    )
    p.add_argument("--timeout-s", type=float, default=3600.0, help="per child; a side over it is recorded")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DAVIS-2016 folder (JPEGImages/480p/...)")
    p.add_argument("--sequence", default="car-shadow")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "predict_bench", help="weights, frames, PNGs")
    p.add_argument("--out", type=Path, help="JSON (default: benchmarks/results/predict_<device>.json)")
    p.add_argument("--toy", action="store_true", help="128 px, 1-2 objects, 4-8 frames, one round (tests)")
    p.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    for name, kind in (("launched", float), ("weights", Path), ("frames-dir", Path), ("prompt", Path),
                       ("out-dir", Path), ("result", Path), ("image-size", int)):  # fmt: skip
        p.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.toy:
        for key, value in TOY.items():
            setattr(args, key, value)
        args.points = None
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The points to measure, as {"size", "objects", "frames"}: --points in order, else every combination."""
    if args.points:
        triples = args.points
    else:
        triples = [(s, n, length) for s in args.sizes for n in args.objects for length in args.frames]
    return [{"size": s, "objects": n, "frames": length} for s, n, length in triples]


def prepare(args: argparse.Namespace, points: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Weights, frame folders (one per L) and prompt PNGs (one per N) in the work folder."""
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    name, jpegs, first = source_sequence(args.data, args.sequence, args.work)
    sizes = sorted({p["size"] for p in points})
    inputs = {
        "weights": make_weights(args.work),
        "frames": {n: make_frames(name, jpegs, n, args.work) for n in sorted({p["frames"] for p in points})},
        "prompts": {
            n: make_prompt(name, first, n, sizes, args.work) for n in sorted({p["objects"] for p in points})
        },
    }
    return name, inputs


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    sys.path.insert(0, str(HERE))  # train_step.py beside this file
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    points = grid(args)
    name, inputs = prepare(args, points)
    result = header(args, points, name)
    out = args.out or HERE / "results" / f"predict_{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")
    rows = []
    for point in points:
        print(f"S={point['size']} N={point['objects']} L={point['frames']}", flush=True)
        rows.append(measure_point(point, args, inputs))
        partial.write_text(json.dumps({**result, "points": rows}, indent=2) + "\n")
    import train_step as ts

    result["points"] = rows
    result["environment"]["load_avg_end"] = ts._load_avg()
    out.write_text(json.dumps(result, indent=2) + "\n")
    partial.unlink()
    print(format_table(result))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
