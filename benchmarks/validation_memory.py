"""Peak memory and time of one validation epoch on a recipe (default: the DAVIS recipe), optionally of another
checkout of sam2train, to report validation's memory before and after a change.

    python benchmarks/validation_memory.py --val-path DAVIS_FOLDER [--recipe davis] [--checkpoint OFFICIAL.pt]
        [--src OTHER_CHECKOUT/src] [--threads 1] [--out FILE.json] [key=value ...]

Validation runs in a child process (`sam2train.cli.main(["validate", ...])` needs a Lightning checkpoint, so the
child builds the recipe's module and datamodule and calls `Trainer.validate` itself, as `sam2train validate`
does): whole videos tracked from their first frame, the loss and J&F. Without `--checkpoint` a random model of the
recipe's `model.config` is written in the official format. The child reports peak RSS (and on CUDA
`torch.cuda.max_memory_allocated`), seconds and the logged metrics; `--src` puts another checkout's `src` first on
the child's path (e.g. a `git worktree` of the commit before).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step.py beside this file
import train_step as ts  # noqa: E402

CHILD = """
import json, sys, time, warnings
import torch
from sam2train.config import load_config
from sam2train.data.datamodule import SAM2LightningDataModule
from sam2train.train.module import SAM2LightningModule
from sam2train.train.trainer import make_trainer

from sam2train.memory import peak_rss_bytes
recipe, overrides = sys.argv[1], sys.argv[2:]
cfg = load_config(recipe, overrides)
warnings.simplefilter("ignore")
datamodule = SAM2LightningDataModule(cfg)
datamodule.setup("validate")
module = SAM2LightningModule(cfg)
module.build()
start = time.perf_counter()
results = make_trainer(cfg).validate(module, datamodule=datamodule, verbose=False)
seconds = time.perf_counter() - start
gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
frames = sum(ref.length for ref in datamodule.val_set.index)
print("RESULT " + json.dumps({
    "seconds": seconds, "frames": frames, "videos": len(datamodule.val_set.index),
    "peak_rss_gb": peak_rss_bytes() / 2**30, "gpu_max_allocated_gb": gpu,
    "metrics": {k: float(v) for k, v in (results[0] if results else {}).items()},
}))
"""


def official_weights(config: str, path: Path) -> Path:
    """A randomly initialised `config` (official name) in Meta's {"model": state_dict} format, written once."""
    if not path.is_file():
        import torch
        from sam2.build_sam import build_sam2

        from sam2train.model.build import OFFICIAL_CONFIGS

        torch.manual_seed(0)
        model = build_sam2(OFFICIAL_CONFIGS[config], None, device="cpu")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict()}, path)
    return path


def validate_in_child(recipe: str, overrides: list[str], src: Path | None, threads: int) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, recipe, *overrides], env=env, capture_output=True, text=True
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"validation child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--val-path", required=True, type=Path, help="the validation folder (DAVIS layout)")
    p.add_argument("--recipe", default="davis", help="recipe name or YAML (default: davis)")
    p.add_argument(
        "--checkpoint", type=Path, help="official .pt (default: random weights of the recipe's model)"
    )
    p.add_argument("--src", type=Path, help="another checkout's src folder to measure instead of this one")
    p.add_argument("--label", default="this checkout", help="name of the measured code in the JSON")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=Path("/tmp/sam2train_validation_memory"))
    p.add_argument("--out", type=Path, help="append the result to this JSON file (a list)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.image_size=512")
    args = p.parse_args(argv)

    from sam2train.config import load_config

    cfg = load_config(args.recipe, args.overrides)
    checkpoint = args.checkpoint or official_weights(
        cfg.model.config, args.work / f"{cfg.model.config}_random.pt"
    )
    overrides = [
        f"data.val_path={args.val_path}",
        f"data.train_path={args.val_path}",
        f"model.checkpoint={checkpoint}",
        "data.num_workers=0",
        f"logging.root_dir={args.work / 'runs'}",
        "logging.progress_bar=none",
        *args.overrides,
    ]
    started = time.time()
    figures = validate_in_child(args.recipe, overrides, args.src, args.threads)
    result = {
        "benchmark": "validation_memory",
        "code": args.label,
        "recipe": args.recipe,
        "overrides": args.overrides,
        "wall_s": time.time() - started,
        **figures,
        "environment": ts.environment("cuda" if figures["gpu_max_allocated_gb"] is not None else "cpu"),
    }
    print(
        f"{args.label}: {figures['videos']} videos, {figures['frames']} frames in {figures['seconds']:.1f} s, "
        f"peak RSS {figures['peak_rss_gb']:.2f} GB"
        + (
            f", GPU max allocated {figures['gpu_max_allocated_gb']:.2f} GB"
            if figures["gpu_max_allocated_gb"]
            else ""
        )
        + f", val/J&F {figures['metrics'].get('val/J&F', float('nan')):.4f}"
    )
    if args.out is not None:
        previous = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([*previous, result], indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
