"""Do images help? DAVIS-2016 from scratch, video only against video + the training frames as pseudo-videos.

    python benchmarks/image_pretraining.py [--steps 600] [--every 150] [--image-size 256] [--weight 0.5]
        [--image-clip pseudo_video] [--data ../shared/data/davis2016] [--heldout a,b,...] [--frames-limit N]
        [--out-dir benchmarks/results] [--run-root runs] [key=value ...]

Two runs of `configs/davis2016_scratch.yaml` with the same seed, model and step budget (`learning_curve.py` does
the fit, the checkpoints and the scoring):
- `video`: the recipe as it is (the 14 training sequences, clips of `data.clip_length` frames);
- `video_images`: the same sequences mixed in `data.train` with every annotated frame of them as an
  `image_folder` source (links written in a temporary folder) at weight --weight, each image made a clip by
  `data.image_clip` (--image-clip, default `pseudo_video`). At the same step budget, a share of the steps goes to
  images instead of videos (weight 0.5: one clip in three).
Each periodic checkpoint tracks the first-frame mask of the held-out sequences with `sam2train predict` and is
scored with DAVIS J&F at full resolution; the headline of an arm is the mean over its last two checkpoints.

Writes `<out-dir>/image_pretraining_<device>.json`: `arms` {video, video_images}, each {checkpoints [{step,
heldout, detail}], mean_last_two {steps, heldout}, wall_time_s, overrides, run_dir}; `difference` (video_images
minus video, mean of the last two); `copy_first_frame`; `images` (how many); the settings, `device` and `machine`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _learning_curve() -> ModuleType:
    """benchmarks/learning_curve.py, whose fit and scoring both arms use."""
    spec = importlib.util.spec_from_file_location(
        "learning_curve", Path(__file__).with_name("learning_curve.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("learning_curve", module)
    spec.loader.exec_module(module)
    return module


lc = _learning_curve()


def _names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600, help="training steps of each arm (the cosine T_max too)")
    p.add_argument("--every", type=int, default=150, help="keep a checkpoint every this many steps")
    p.add_argument("--image-size", type=int, default=256, help="model input size (a multiple of 32)")
    p.add_argument("--weight", type=float, default=0.5, help="weight of the image source (videos: 1)")
    p.add_argument("--image-clip", default="pseudo_video", choices=("single", "repeat", "pseudo_video"))
    p.add_argument("--data", type=Path, default=lc.DEFAULT_DATA, help="DAVIS-2016 root")
    p.add_argument(
        "--heldout", type=_names, help="comma-separated held-out sequences (default: the recipe's)"
    )
    p.add_argument("--frames-limit", type=int, help="score only the first N frames of each sequence")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument(
        "--run-root", type=Path, default=REPO / "runs", help="where the fits write their run folders"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides for both fits")
    args = p.parse_args(argv)
    if not 1 <= args.every <= args.steps:
        p.error(f"--every {args.every}: must be between 1 and --steps ({args.steps})")
    if args.frames_limit is not None and args.frames_limit < 3:
        p.error("--frames-limit: at least 3 (the first and last frames are not scored)")
    if args.weight <= 0:
        p.error("--weight: must be > 0")
    return args


def stage_images(data: Path, seqs: list[str], out: Path) -> int:
    """An image_folder dataset at `out`: links `images/<seq>_<frame>.jpg` and `masks/<seq>_<frame>.png` to every
    annotated frame of `seqs`; returns how many."""
    frames, masks = (
        data / kind / "480p" if (data / kind / "480p").is_dir() else data / kind
        for kind in ("JPEGImages", "Annotations")
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    count = 0
    for seq in seqs:
        for mask in sorted((masks / seq).glob("*.png")):
            frame = frames / seq / f"{mask.stem}.jpg"
            if frame.is_file():
                (out / "images" / f"{seq}_{frame.name}").symlink_to(frame.resolve())
                (out / "masks" / f"{seq}_{mask.name}").symlink_to(mask.resolve())
                count += 1
    return count


def image_overrides(data: Path, train: list[str], images: Path, weight: float, image_clip: str) -> list[str]:
    """The overrides that turn the recipe's one training source into videos + images."""
    sources = [
        {"path": str(data.resolve()), "format": "davis", "videos": train, "name": "davis"},
        {"path": str(images), "format": "image_folder", "weight": weight, "name": "images"},
    ]
    return [
        "data.train_path=null",
        "data.train_videos=null",
        f"data.train={json.dumps(sources)}",
        f"data.image_clip={image_clip}",
    ]


def run_arm(name: str, overrides: list[str], args: argparse.Namespace, score: Any) -> dict[str, Any]:
    """One fit and the scores of its checkpoints."""
    from sam2train.config import load_config

    cfg = load_config(lc.CONFIG, overrides)  # a bad key or value stops here, before anything runs
    run_dir = Path(cfg.logging.root_dir) / cfg.logging.name / cfg.logging.version
    print(f"== arm {name}: {run_dir}", flush=True)
    fit_seconds = lc.run_fit(overrides)
    scored = []
    start = time.perf_counter()
    for step, path in lc.periodic_checkpoints(run_dir / "checkpoints", args.steps, args.every):
        entry = score(path, f"{name}_step{step}")
        scored.append({"step": step, **entry, "checkpoint": str(path)})
        print(f"{name} step {step}: held-out J&F {entry['heldout']:.4f}", flush=True)
    last = scored[-2:]
    mean = {
        "steps": [c["step"] for c in last],
        "heldout": round(sum(c["heldout"] for c in last) / len(last), 6),
    }
    return {
        "checkpoints": scored,
        "mean_last_two": mean,
        "wall_time_s": {"fit": round(fit_seconds, 1), "scoring": round(time.perf_counter() - start, 1)},
        "overrides": overrides,
        "run_dir": str(run_dir),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both arms and the comparison; returns the result written to JSON."""
    from sam2train.config import load_config

    start = time.perf_counter()
    device, machine = lc.device_name(), lc.machine_info()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = lc.fit_overrides(args, f"images_{device}_video_{stamp}")
    cfg = load_config(lc.CONFIG, base)
    heldout, train = list(cfg.data.val_videos or []), list(cfg.data.train_videos or [])
    if not heldout or not train or set(heldout) & set(train):
        raise ValueError("the recipe must split data.train_videos and data.val_videos")
    with tempfile.TemporaryDirectory(prefix="image_pretraining_") as tmp:
        work = Path(tmp)
        count = stage_images(args.data, train, work / "images")
        frames, gt = lc.stage_sequences(args.data, heldout, args.frames_limit, work / "data")

        def score(ckpt: Path, label: str) -> dict[str, Any]:
            detail = lc.predict_and_score(ckpt, heldout, frames, gt, work / label)
            return {"heldout": detail["J&F"], "detail": detail}

        baseline = lc.copy_first_frame(heldout, gt, work / "copy")
        mixed = [
            o
            for o in lc.fit_overrides(args, f"images_{device}_video_images_{stamp}")
            if not o.startswith(("data.train_path=", "data.train_videos="))
        ] + image_overrides(args.data, train, work / "images", args.weight, args.image_clip)
        arms = {
            "video": run_arm("video", base, args, score),
            "video_images": run_arm("video_images", mixed, args, score),
        }
    a, b = arms["video"]["mean_last_two"]["heldout"], arms["video_images"]["mean_last_two"]["heldout"]
    return {
        "device": device,
        "machine": machine,
        "steps": args.steps,
        "every": args.every,
        "image_size": args.image_size,
        "weight": args.weight,
        "image_clip": args.image_clip,
        "images": count,
        "frames_limit": args.frames_limit,
        "heldout_sequences": heldout,
        "train_sequences": train,
        "copy_first_frame": baseline["J&F"],
        "arms": arms,
        "difference": round(b - a, 6),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "config_file": str(lc.CONFIG.relative_to(REPO)),
    }


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    try:
        result = run(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:  # config, split, data or a failed command
        raise SystemExit(f"image_pretraining: error: {exc}") from exc
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"image_pretraining_{result['device']}.json"
    out.write_text(json.dumps(result, indent=2))
    video, mixed = (result["arms"][k]["mean_last_two"]["heldout"] for k in ("video", "video_images"))
    print(
        f"held-out J&F, mean of the last two checkpoints: video only {video:.4f}, video + {result['images']} "
        f"images ({result['image_clip']}, weight {result['weight']:g}) {mixed:.4f} ({result['difference']:+.4f}); "
        f"copy first frame {result['copy_first_frame']:.4f}"
    )
    print(f"written {out}")
    return out


if __name__ == "__main__":
    main()
