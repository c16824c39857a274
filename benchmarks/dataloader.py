"""Data-loader throughput in clips/s: 8-frame clips, 3 objects, at 256 and 1024 px, with 0 and 2 workers.

    python benchmarks/dataloader.py [--data DIR] [--batches 12]

Generates a demo dataset at 480x854 (DAVIS frame size) unless --data points at a DAVIS-layout folder.
Prints one line per setting; figures go to the README by hand with the machine they came from.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from sam2train.config import load_config
from sam2train.data.datamodule import SAM2LightningDataModule
from sam2train.data.demo import write_demo_dataset


def measure(train_path: Path, size: int, workers: int, batches: int) -> float:
    cfg = load_config(
        None,
        [
            f"data.train_path={train_path}",
            "data.clip_length=8",
            "data.stride=1",
            "data.max_objects=3",
            f"data.num_workers={workers}",
            f"model.image_size={size}",
        ],
    )
    dm = SAM2LightningDataModule(cfg)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up and first decode are not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a DAVIS-layout training folder (default: generated)")
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = args.data
        if train is None:
            write_demo_dataset(Path(tmp), videos=4, frames=24, size=(480, 854), objects=3, seed=0)
            train = Path(tmp) / "train"
        print(
            f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
        )
        for size in (256, 1024):
            for workers in (0, 2):
                rate = measure(train, size, workers, args.batches)
                print(f"{size:5d} px  workers={workers}  {rate:6.2f} clips/s  ({8 * rate:6.1f} frames/s)")


if __name__ == "__main__":
    main()
