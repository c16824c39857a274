"""`sam2train benchmark`: time a few training steps of a config on this machine's device and report its peak
memory, or search the largest clip length / object chunk that fits a memory budget (`--fit-memory 24GB`).
The measuring is `sam2train.train.benchmark`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sam2train.cli.common import add_config_args
from sam2train.config import TRAINABLE_GROUPS, load_config
from sam2train.errors import UserError

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """'24GB', '24 GiB', '1.5g', '500MB', '2048' (bytes) -> bytes. K/M/G/T with or without `B` or `iB` are
    powers of 1024 (a "24 GB" GPU holds 24 GiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if m is None or (m.group(3) == "ib" and not m.group(2)):
        raise UserError(
            f"--fit-memory: '{text}' is not a memory size; write a number and a unit, e.g. 24GB, 500MB, 1.5GiB"
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if size <= 0:
        raise UserError(f"--fit-memory: '{text}' is not a positive memory size")
    return size


def _search_axis(text: str) -> tuple[str, list[Any]]:
    """'data.clip_length=8,4,2' -> ('data.clip_length', [8, 4, 2]), largest first as written."""
    import yaml

    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=V1,V2,... (e.g. data.clip_length=8,4,2)")
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time a few training steps of a config here and report peak memory (or what fits a budget)",
    )
    add_config_args(p)
    p.add_argument("--steps", type=int, default=3, help="measured training steps (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and not measured (default 1)")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results as JSON to FILE, or alone: print JSON instead of the table (put it after "
        "the key=value overrides)",
    )
    p.add_argument(
        "--fit-memory",
        metavar="SIZE",
        help="search the largest data.clip_length, then model.object_chunk, whose peak stays under SIZE "
        "(e.g. 24GB; K/M/G are powers of 1024)",
    )
    p.add_argument(
        "--search",
        action="append",
        type=_search_axis,
        metavar="KEY=V1,V2,...",
        help="with --fit-memory: search these values of KEY (largest first) instead of the default axes; "
        "repeat for several keys, searched in order",
    )
    p.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process instead of a fresh one per setting (on CPU the peak RSS then includes "
        "what the process held before)",
    )
    p.set_defaults(run=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    budget = parse_size(args.fit_memory) if args.fit_memory is not None else None
    if args.search and budget is None:
        raise UserError("--search needs --fit-memory")
    cfg = load_config(args.config, args.overrides)
    from sam2train.train.benchmark import (
        check_step_counts,
        default_axes,
        fit_memory,
        measure,
        measure_isolated,
        overrides_of,
    )

    check_step_counts(args.steps, args.warmup)

    run_one = measure if args.in_process else measure_isolated

    def run(settings: dict[str, Any], limit: int | None = None):
        return run_one(
            load_config(args.config, [*args.overrides, *overrides_of(settings)]),
            args.steps,
            args.warmup,
            limit,
        )

    if budget is None:
        result = run_one(cfg, args.steps, args.warmup)
        if not result.ok:
            raise UserError(f"the run failed: {result.error or 'out of memory'}")
        report: dict[str, Any] = {
            "config": str(args.config),
            "overrides": list(args.overrides),
            **asdict(result),
        }
        if args.json != "-":
            _print_measurement(result, cfg, title=f"sam2train benchmark: {args.config}")
    else:
        axes = args.search or default_axes(cfg)
        for key, values in axes:  # a bad key or value is refused here, before any run
            for value in values:
                load_config(args.config, [*args.overrides, *overrides_of({key: value})])
        search = fit_memory(axes, budget, lambda s: run(s, budget))
        report = _search_report(args, search)
        if args.json != "-":
            _print_search(search.tried, f"sam2train benchmark --fit-memory {args.fit_memory}", budget)
            print(report["answer"])
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _search_report(args: argparse.Namespace, search) -> dict[str, Any]:
    from sam2train.train.benchmark import overrides_of

    size = _human(search.budget_bytes)
    if search.chosen is None:
        answer = f"nothing fits in {size}"
        if search.tried:  # the last setting tried is the most frugal one of the axis that failed
            last = search.tried[-1]
            how = "ran out of memory" if last.out_of_memory else f"needed {_human(last.needed_bytes)}"
            answer += f": the most frugal setting tried ({' '.join(overrides_of(last.settings))}) {how}"
    else:
        chosen = search.chosen
        answer = (
            f"fits in {size}: {' '.join(overrides_of(chosen.settings))} "
            f"(peak {_human(chosen.needed_bytes)}, {chosen.s_per_step:.3g} s/step)"
        )
    return {
        "config": str(args.config),
        "overrides": list(args.overrides),
        "budget_bytes": search.budget_bytes,
        "axes": [[k, v] for k, v in search.axes],
        "fits": search.chosen is not None,
        "chosen": search.chosen.settings if search.chosen else None,
        "answer": answer,
        "tried": [asdict(m) for m in search.tried],
    }


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _console():
    from rich.console import Console

    console = Console(file=sys.stdout)
    return console if console.is_terminal else Console(file=sys.stdout, width=110)


def _peak(m) -> str:
    if m.out_of_memory:
        return "out of memory"
    if not m.ok:
        return m.error or "failed"
    peak = _human(m.peak_memory_bytes)
    return f"{peak} ({_human(m.reserved_memory_bytes)} reserved)" if m.reserved_memory_bytes else peak


def _print_measurement(m, cfg, title: str) -> None:
    """A rich table of one measurement: what ran, then the figures."""
    from rich.table import Table

    groups = cfg.model.trainable_modules
    trains = "everything" if set(groups) == set(TRAINABLE_GROUPS) else ", ".join(groups) or "nothing in full"
    adapters = cfg.model.adapters
    if adapters.type is not None:
        trains += f" + {adapters.type} r={adapters.r} on {', '.join(adapters.targets)}"
    batches = cfg.trainer.accumulate_grad_batches
    rows = [
        ("model", f"{cfg.model.config} at {cfg.model.image_size} px, trains {trains}"),
        (
            "clips",
            f"{cfg.data.batch_size} per batch, {batches} batch{'es' if batches > 1 else ''} per step; "
            f"{m.frames_per_clip:g} frames, {m.objects_per_clip:.1f} objects each",
        ),
        ("device", f"{m.device}, {m.precision}"),
        ("measured", f"{m.steps} steps ({m.batches} batches) after {m.warmup} warm-up"),
        ("s/step", f"{m.s_per_step:.3f} (+ {m.data_wait_s_per_step:.3f} waiting for data)"),
        ("clips/s", f"{m.clips_per_s:.2f}"),
        ("object-frames/s", f"{m.object_frames_per_s:.1f}"),
        ("peak memory", f"{_peak(m)} ({m.peak_memory_kind})"),
    ]
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    _console().print(table)


def _print_search(rows, title: str, budget: int) -> None:
    """A rich table of the settings tried by --fit-memory, in order."""
    from rich.table import Table

    table = Table(title=title)
    keys = list(dict.fromkeys(k for m in rows for k in m.settings))
    for key in keys:
        table.add_column(key)
    for name in ("s/step", "clips/s", "object-frames/s", "peak memory", "fits"):
        table.add_column(name, justify="right")
    for m in rows:
        cells = ["null" if m.settings.get(k) is None else str(m.settings[k]) for k in keys]
        if m.ok:
            cells += [f"{m.s_per_step:.3f}", f"{m.clips_per_s:.2f}", f"{m.object_frames_per_s:.1f}"]
        else:
            cells += ["-", "-", "-"]
        cells += [_peak(m), "yes" if m.ok and m.needed_bytes <= budget else "no"]
        table.add_row(*cells)
    _console().print(table)
    kinds = {m.peak_memory_kind for m in rows if m.peak_memory_kind}
    if kinds:
        print(f"peak memory: {', '.join(sorted(kinds))}; device: {rows[-1].device or '?'}")
