"""Step time and peak memory against clip length T and object count N, ours vs Meta's trainer.

    python benchmarks/scaling.py [--frames 2,4,8,16] [--objects 1,2,4,8,16] [--fixed-frames 8]
        [--fixed-objects 3] [train_step.py's options: --device --model --image-size --prompt --precision
        --trainable --steps --warmup --threads ...] [--out-dir benchmarks/results]

Two sweeps: T over --frames with N = --fixed-objects, and N over --objects with T = --fixed-frames (defaults 8
and 3, Meta's recipe, capped at the largest value of the other sweep so a quick `--frames 2,4 --objects 1,2`
stays small). Every point is measured as train_step.py measures one setting (its functions, imported): both
sides built once with the same weights, alternated step by step, memory in a child process per side and point.
Writes scaling_<device>.png (time and memory, against T and against N) and scaling_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step.py beside this file
import train_step as ts  # noqa: E402

SWEEPS = {"frames": "clip length T (frames)", "objects": "objects N"}
LABELS = {
    "ours": "ours (default)",
    "chunked": "ours, object_chunk 1",
    "lean": "ours, object_chunk 1 + checkpointing",
    "meta": "Meta SAM2Train",
}


def _ints(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _points(text: str) -> list[tuple[str, int, int]]:
    """`8x16,16x8` -> [(sweep, T, N)]: the sweep is `objects` when T is 8, else `frames`."""
    try:
        pairs = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected TxN points such as 8x16,16x8, got {text!r}")
    return [("objects" if t == 8 else "frames", t, n) for t, n in pairs]


def grid(
    frames: list[int], objects: list[int], fixed_frames: int, fixed_objects: int
) -> list[tuple[str, int, int]]:
    """(sweep, T, N) for the T sweep then the N sweep."""
    return [("frames", t, fixed_objects) for t in frames] + [("objects", fixed_frames, n) for n in objects]


def run(
    base: ts.Settings,
    points: list[tuple[str, int, int]],
    names: tuple[str, ...] = ts.SIDES,
    partial: Path | None = None,
) -> dict[str, Any]:
    """Measure every point (a (T, N) in both sweeps is measured once) with one model per side; `partial`: a JSON
    file rewritten after each point, so a long sweep that is killed (out of memory) keeps what it measured."""
    ts.apply_threads(base)
    result = ts.header(base, "scaling")
    result["sides"] = list(names)
    sides = ts.build_sides(base, names)
    result["trainable_params"] = ts.trainable_params(sides)
    measured: dict[tuple[int, int], dict[str, Any]] = {}
    rows = []
    for sweep, t, n in points:
        if (t, n) not in measured:
            print(f"T={t} N={n} ...", flush=True)
            measured[t, n] = ts.measure_point(sides, replace(base, frames=t, objects=n))
        rows.append({"sweep": sweep, "frames": t, "objects": n, **measured[t, n]})
        if partial is not None:
            partial.write_text(json.dumps({**result, "points": rows}, indent=2) + "\n")
    result["points"] = rows
    result["environment"]["load_avg_end"] = ts._load_avg()
    return result


def side_in_child(s: ts.Settings, name: str, budget_gb: float | None) -> dict[str, Any]:
    """One side alone in a fresh process (train_step.py --side-child): its steps timed, its memory peak; a
    child killed by the system (out of memory) or over `budget_gb` is reported as `out_of_memory`."""
    cmd = [sys.executable, str(Path(ts.__file__).resolve()), "--side-child", name, *ts.settings_argv(s)]
    if budget_gb is not None:
        cmd.append(f"--memory-budget-gb={budget_gb}")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode < 0:  # killed by a signal: the OOM killer on a machine without a budget
        return {
            "out_of_memory": True,
            "budget_gb": budget_gb,
            "error": f"killed by signal {-proc.returncode}",
        }
    if proc.returncode != 0:
        raise RuntimeError(f"side child {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_isolated(
    base: ts.Settings,
    points: list[tuple[str, int, int]],
    names: tuple[str, ...],
    budget_gb: float | None,
    partial: Path | None = None,
) -> dict[str, Any]:
    """As `run`, but every side of every point in its own process, one after another (for points where all
    sides together do not fit in memory); sides are not alternated, so load changes skew speed ratios more."""
    result = ts.header(base, "scaling")
    result.update(sides=list(names), isolated=True, memory_budget_gb=budget_gb)
    rows = []
    for sweep, t, n in points:
        print(f"T={t} N={n} ...", flush=True)
        s = replace(base, frames=t, objects=n)
        figures = {name: side_in_child(s, name, budget_gb) for name in names}
        rows.append({"sweep": sweep, "frames": t, "objects": n, **figures})
        if partial is not None:
            partial.write_text(json.dumps({**result, "points": rows}, indent=2) + "\n")
    result["points"] = rows
    counts = {r[name]["trainable_params"] for r in rows for name in names if "trainable_params" in r[name]}
    if len(counts) > 1:
        raise RuntimeError(f"trainable parameter counts differ between sides: {counts}")
    result["trainable_params"] = counts.pop() if counts else None
    result["environment"]["load_avg_end"] = ts._load_avg()
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """Rows: step time (median, min-max band) and peak memory; columns: against T and against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), squeeze=False)
    mem_label = "peak RSS (MB)" if result["settings"]["device"] == "cpu" else "peak alloc (MB)"
    for col, (sweep, xlabel) in enumerate(SWEEPS.items()):
        rows = [r for r in result["points"] if r["sweep"] == sweep]
        xs = [r[sweep] for r in rows]
        for side in result.get("sides", ts.SIDES):
            style = "s--" if side == "meta" else {"ours": "o-", "lean": "^-", "chunked": "v-"}.get(side, "x-")
            label = LABELS.get(side, side)
            fit = [r for r in rows if "step_s" in r[side]]  # out-of-memory points are left out
            fx = [r[sweep] for r in fit]
            med = [r[side]["step_s"]["median"] for r in fit]
            lo = [r[side]["step_s"]["min"] for r in fit]
            hi = [r[side]["step_s"]["max"] for r in fit]
            (line,) = axes[0, col].plot(fx, med, style, label=label)
            axes[0, col].fill_between(fx, lo, hi, color=line.get_color(), alpha=0.2)
            axes[1, col].plot(fx, [r[side]["memory"]["peak_mb"] for r in fit], style, label=label)
        fixed = "objects" if sweep == "frames" else "frames"
        title = f"{fixed} = {rows[0][fixed]}" if rows else ""
        for row, ylabel in enumerate(("step time (s)", mem_label)):
            ax = axes[row, col]
            ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
            if len(set(xs)) > 1:
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.grid(alpha=0.3)
            ax.legend()
    s = result["settings"]
    fig.suptitle(
        f"{result['device']}: {s['model']}, {s['image_size']} px, {s['prompt']} prompts, precision "
        f"{s['precision']}, {result['trainable_params'] or 0:,} trainable"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(result: dict[str, Any]) -> str:
    """One line per (T, N) and side: s/step, s per object-frame, peak memory, and speed / memory against Meta's."""
    lines = [
        f"{'T':>3} {'N':>3} {'side':<8} {'s/step':>8} {'s/obj-fr':>9} {'peak MB':>8} {'speed':>6} {'mem':>5}"
    ]
    seen = set()
    for r in result["points"]:
        if (r["frames"], r["objects"]) in seen:
            continue
        seen.add((r["frames"], r["objects"]))
        meta = r["meta"]
        for side in result.get("sides", ts.SIDES):
            o = r[side]
            if o.get("out_of_memory"):
                budget = f" (budget {o['budget_gb']:g} GB)" if o.get("budget_gb") else ""
                lines.append(f"{r['frames']:>3} {r['objects']:>3} {side:<8} out of memory{budget}")
                continue
            step = o["step_s"]["median"]
            speed = f"{meta['step_s']['median'] / step:>6.2f}" if "step_s" in meta else f"{'-':>6}"
            mem = (
                f"{o['memory']['peak_mb'] / meta['memory']['peak_mb']:>5.2f}"
                if "memory" in meta
                else f"{'-':>5}"
            )
            lines.append(
                f"{r['frames']:>3} {r['objects']:>3} {side:<8} {step:>8.3f} "
                f"{step / (r['frames'] * r['objects']):>9.4f} {o['memory']['peak_mb']:>8.0f} {speed} {mem}"
            )
    lines.append(
        "speed: Meta's s/step over the side's (>1 faster); mem: the side's peak over Meta's (<1 smaller)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ts.add_settings_args(parser)
    parser.add_argument("--frames", type=_ints, default=[2, 4, 8, 16], help="T values, e.g. 2,4,8,16")
    parser.add_argument("--objects", type=_ints, default=[1, 2, 4, 8, 16], help="N values, e.g. 1,2,4,8,16")
    parser.add_argument("--fixed-frames", type=int, help="T of the N sweep (default: min(8, max --frames))")
    parser.add_argument("--fixed-objects", type=int, help="N of the T sweep (default: min(3, max --objects))")
    parser.add_argument(
        "--variants",
        default="ours",
        help=f"our sides beside Meta's, comma-separated, of {list(ts.OUR_VARIANTS)} (default: ours)",
    )
    parser.add_argument(
        "--points",
        type=_points,
        help="explicit TxN points instead of the two sweeps, e.g. 8x16,8x32,16x8 (each in both sweeps it fits)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="every side of every point in its own process (points where all sides do not fit together)",
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        help="with --isolate on CPU: a side needing more address space than this is reported out of memory",
    )
    parser.add_argument("--tag", default="", help="suffix of the output files: scaling_<device><tag>.json")
    parser.add_argument("--out-dir", type=Path, default=ts.RESULTS)
    args = parser.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    if "ours" not in variants or set(variants) - set(ts.OUR_VARIANTS):
        parser.error(f"--variants must include 'ours' and name only {list(ts.OUR_VARIANTS)}")
    fixed_t = args.fixed_frames or min(8, max(args.frames))
    fixed_n = args.fixed_objects or min(3, max(args.objects))
    points = args.points or grid(args.frames, args.objects, fixed_t, fixed_n)
    base = ts.settings_from_args(args, points[0][1], points[0][2])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"scaling_{ts.device_slug(base.device)}{args.tag}"
    partial = stem.with_suffix(".partial.json")
    if args.isolate:
        result = run_isolated(base, points, (*variants, "meta"), args.memory_budget_gb, partial)
    else:
        result = run(base, points, (*variants, "meta"), partial=partial)
    stem.with_suffix(".partial.json").unlink()
    result["grid"] = {
        "frames": args.frames,
        "objects": args.objects,
        "fixed_frames": fixed_t,
        "fixed_objects": fixed_n,
    }
    print(format_table(result))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png")
    return result


if __name__ == "__main__":
    main()
