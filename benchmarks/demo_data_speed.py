"""Time the demo dataset generator: `python benchmarks/demo_data_speed.py [videos frames size]`."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sam2train.data.demo import write_demo_dataset


def main(argv: list[str]) -> None:
    videos, frames, size = (int(a) for a in argv) if argv else (8, 24, 256)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = write_demo_dataset(Path(tmp) / "demo", videos=videos, frames=frames, size=(size, size))
        seconds = time.perf_counter() - start
    print(f"{videos} videos x {frames} frames at {size}x{size}: {summary['files']} files in {seconds:.2f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
