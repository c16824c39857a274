"""The GPU suite: everything we want to know about one CUDA card, in one command that fits in 8 minutes.

    python benchmarks/gpu_suite.py [--budget-s 450] [--sections environment,recipes,...] [--davis DIR]
        [--out FILE.json] [--toy [--model CONFIG]]

Sections, in order, each in a child process with its own time box (its failure, or the box running out, is
recorded in the JSON and the next section runs; what a section measured before that is kept):
- `environment`: card, driver, torch / CUDA / cuDNN, bf16 support, a bf16 matrix product's TFLOP/s, a pinned
  host-to-device copy's GB/s, one fused AdamW step;
- `recipes`: a 2-step `fit` of every shipped recipe under bf16-mixed (hiera b+, random weights, 1024 px) on data
  made by `sam2train demo-data`, each recipe's data keys pointed there; seconds, losses, `max_memory_allocated`;
- `train_step`: one training step, ours vs Meta's trainer (benchmarks/train_step.py, one side per process), hiera
  b+, 1024 px, bf16, 8 frames, with 3 objects (ours, Meta) and with 16 (ours, chunked, lean, Meta; Meta's own
  `max_num_objects` cap is a data-loader setting, so the benchmark's batch of 16 objects reaches it whole):
  s/step, frames/s, `max_memory_allocated`;
- `feature_cache`: a memory-only epoch plain, with the feature cache and at the floor (benchmarks/feature_cache.py);
- `predict`: `predict`'s frames/s (predict_video, PNGs written) against Meta's SAM2VideoPredictor (same weights,
  neither with post-processing) on one demo video at 1024 px, under bf16 autocast on CUDA;
- `davis`: the DAVIS-2016 scratch recipe at 512 px in bf16 for the time left (`--davis`: a DAVIS-2016 folder,
  default data/davis2016; skipped with a note when absent): steps reached, losses, validation J&F if reached.

Writes benchmarks/results/gpu_<card>.json (--out to change): `card`, `driver`, `torch`, `cuda`, `settings`,
`sections` {name: {status (ok | failed | timeout | skipped), seconds, limit_s, error, figures...}}, `summary`.
`--toy` runs every section on the CPU at toy sizes (64 px, 2 frames, 1 step; the model from --model, default
sam2.1_hiera_t) so that a test checks the whole suite end to end; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SECTIONS = ("environment", "recipes", "train_step", "feature_cache", "predict", "davis")
LIMITS_S = {"environment": 30, "recipes": 170, "train_step": 150, "feature_cache": 70, "predict": 45}
"""Each section's time box on a GPU; `davis` gets what is left of --budget-s (at least MIN_DAVIS_S)."""
MIN_DAVIS_S = 30
DAVIS_WIDTH, DAVIS_QUALITY = 480, 70
"""The DAVIS copy that travels to the device (64 MiB for everything that travels): frames the
512 px recipe resizes anyway (480x270 frames: about 30 MiB in all)."""
TOY_LIMIT_S = 900
GPU = {"model": "sam2.1_hiera_b+", "size": 1024, "frames": 8, "objects": (3, 16), "steps": 3, "warmup": 1}
TOY = {"model": "sam2.1_hiera_t", "size": 64, "frames": 2, "objects": (2, 3), "steps": 1, "warmup": 0}
DEMO_GPU = ["--videos", "4", "--frames", "24", "--size", "360", "640", "--objects", "3"]
DEMO_TOY = ["--videos", "3", "--frames", "4", "--size", "64", "64", "--objects", "3"]


# --------------------------------------------------------------------------------------------- parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=450.0, help="the whole suite's time (GPU)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in the order above")
    p.add_argument(
        "--davis", default=str(REPO / "data" / "davis2016"), help="DAVIS-2016 folder (JPEGImages, ...)"
    )
    p.add_argument("--out", type=Path, help="JSON path (default: benchmarks/results/gpu_<card>.json)")
    p.add_argument("--toy", action="store_true", help="CPU, toy sizes: checks that every section runs")
    p.add_argument("--model", help="model config (default: sam2.1_hiera_b+; toy: sam2.1_hiera_t)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument(
        "--prepare-davis", nargs=2, metavar=("SRC", "DST"),
        help=f"write a small copy of the DAVIS-2016 folder SRC to DST ({DAVIS_WIDTH} px wide frames) and exit",
    )  # fmt: skip
    p.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    p.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    base = dict(TOY if args.toy else GPU)
    if args.model:
        base["model"] = args.model
    base["device"] = "cpu" if args.toy else "cuda"
    return base


def card() -> dict[str, Any]:
    """Card, driver and versions without initialising CUDA here (the sections measure; this process waits)."""
    import torch

    info: dict[str, Any] = {
        "card": "cpu",
        "driver": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,driver_version,memory.total"
        proc = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            name, driver, memory = (v.strip() for v in proc.stdout.splitlines()[0].split(","))
            info.update(card=name, driver=driver, gpu_memory=memory)
    return info


def run_child(args: argparse.Namespace, section: str, work: Path, limit: float) -> dict[str, Any]:
    """`section` in a child process of its own session (killed whole at `limit`); its record, with what it
    wrote to its part file before failing or being killed."""
    part = work / f"{section}.json"
    part.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--part", str(part),
           "--work", str(work), "--davis", args.davis, *(["--toy"] if args.toy else []),
           *(["--model", args.model] if args.model else [])]  # fmt: skip
    start = time.perf_counter()
    log = (work / f"{section}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code: int | None = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    log.close()
    record: dict[str, Any] = json.loads(part.read_text()) if part.is_file() else {}
    status = record.pop("status", None) or ("timeout" if code is None else "ok" if code == 0 else "failed")
    if status == "timeout" and record.get("ends_at_time_box"):
        status = "ok"  # davis trains for the time left: the box is its end
    record = {
        "status": status,
        "seconds": round(time.perf_counter() - start, 1),
        "limit_s": round(limit),
        **record,
    }
    if status in ("failed", "timeout") and "error" not in record:
        record["error"] = (work / f"{section}.log").read_text()[-2000:]
    return record


def summary(sections: dict[str, Any]) -> dict[str, Any]:
    """The figures a README table takes, flat (absent where a section did not get that far)."""
    out: dict[str, Any] = {}
    env = sections.get("environment", {})
    for key in ("bf16_matmul_tflops", "pinned_h2d_gb_s"):
        if key in env:
            out[key] = env[key]
    fits = sections.get("recipes", {}).get("recipes", {})
    out["recipes_ok"] = sorted(k for k, v in fits.items() if v.get("ok"))
    out["recipes_failed"] = sorted(k for k, v in fits.items() if not v.get("ok"))
    for point, sides in sections.get("train_step", {}).get("points", {}).items():
        for name, fig in sides.items():
            if "step_s" in fig:
                out[f"train_step_{point}_{name}_s"] = fig["step_s"]["median"]
                out[f"train_step_{point}_{name}_peak_gb"] = round(fig["memory"]["peak_mb"] / 1024, 2)
            elif fig.get("out_of_memory"):
                out[f"train_step_{point}_{name}_peak_gb"] = "out of memory"
    cache = sections.get("feature_cache", {}).get("summary", {})
    out.update({f"feature_cache_{k}": v for k, v in cache.items() if k != "max_loss_diff"})
    pred = sections.get("predict", {})
    out.update({f"predict_{k}_frames_per_s": pred[k]["frames_per_s"] for k in ("ours", "meta") if k in pred})
    davis = sections.get("davis", {})
    out.update({f"davis_{k}": davis[k] for k in ("steps", "steps_per_s", "last_val_jf") if k in davis})
    return out


def prepare_davis(src: Path, dst: Path) -> dict[str, Any]:
    """A smaller copy of a DAVIS-2016 folder (JPEGImages/480p, Annotations/480p): every frame resized to
    DAVIS_WIDTH px wide (bilinear; masks nearest, so ids stay ids), JPEG quality DAVIS_QUALITY. Same layout."""
    from PIL import Image

    count = size = 0
    for kind, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        for path in sorted((src / kind).rglob(f"*{suffix}")):
            out = dst / path.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as im:
                height = round(im.height * DAVIS_WIDTH / im.width)
                if suffix == ".jpg":
                    im.convert("RGB").resize((DAVIS_WIDTH, height), Image.BILINEAR).save(
                        out, quality=DAVIS_QUALITY
                    )
                else:
                    im.resize((DAVIS_WIDTH, height), Image.NEAREST).save(out, optimize=True)
            count, size = count + 1, size + out.stat().st_size
    print(f"{dst}: {count} files, {size / 2**20:.1f} MiB")
    return {"files": count, "bytes": size}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.prepare_davis:
        return prepare_davis(Path(args.prepare_davis[0]), Path(args.prepare_davis[1]))
    if args.child:
        return child_main(args)
    chosen = [s for s in SECTIONS if s in args.sections.split(",")]
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {
            "benchmark": "gpu_suite",
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "toy": args.toy,
            **card(),
            "settings": {**sizes(args), "budget_s": args.budget_s, "sections": chosen, "davis": args.davis},
            "sections": {},
        }
        slug = "toy_cpu" if args.toy else "".join(c if c.isalnum() else "-" for c in result["card"].lower())
        out = args.out or RESULTS / f"gpu_{slug}.json"
        start = time.perf_counter()
        for section in chosen:
            left = args.budget_s - (time.perf_counter() - start)
            limit = (
                TOY_LIMIT_S if args.toy else (left if section == "davis" else min(LIMITS_S[section], left))
            )
            if not args.toy and limit < (MIN_DAVIS_S if section == "davis" else 5):
                record: dict[str, Any] = {"status": "skipped", "note": f"{left:.0f} s of the budget left"}
            else:
                record = run_child(args, section, work, limit)
            result["sections"][section] = record
            print(f"{section}: {record['status']} in {record.get('seconds', 0)} s", flush=True)
            result["summary"] = summary(result["sections"])
            write_json(out, result)  # after every section: a killed suite leaves what it measured
        result["total_s"] = round(time.perf_counter() - start, 1)
        write_json(out, result)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")
    return result


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- children


class Part:
    """A child's record, written to its part file after every change (the parent reads it even after a kill)."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def set(self, **values: Any) -> None:
        self.data.update(values)
        write_json(self.path, self.data)


def child_main(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import gpu_sections

    part = Part(args.part)
    try:
        getattr(gpu_sections, args.child)(args, sizes(args), Path(args.work), part)
    except Exception as exc:  # recorded for the parent, which carries on with the next section
        part.set(
            status="failed",
            error=f"{type(exc).__name__}: {exc}"[:1000],
            traceback=traceback.format_exc()[-3000:],
        )
    return part.data


if __name__ == "__main__":
    main()
