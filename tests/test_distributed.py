"""Several processes on CPU (gloo): DDP gradients equal one process's on the same global batch; FSDP, started by
torchrun through `sam2train fit`, shards the parameters, validates before and after training, and writes a
checkpoint that `sam2train export` reads.

The DDP half also runs as a script, `python tests/test_distributed.py OUT.pt DEVICES [OBJECT_CHUNK MEMORY_ONLY]`:
Lightning's launcher starts the second rank by running that same command again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import FSDPStrategy

from conftest import DEMO_CONFIG, TINY_CONFIG, fit_args, prompts_from_masks
from sam2train.batch import VideoSample, collate_videos
from sam2train.config import TRAINABLE_GROUPS, load_config
from sam2train.errors import ConfigError
from sam2train.eval.export import export_checkpoint
from sam2train.train.module import SAM2LightningModule
from sam2train.train.trainer import FSDPGradientClipping, fsdp_units, make_trainer, resolve_strategy

SIZE = 128
CLIP_PROMPTS = [["mask", "box"], ["point", "mask"]]
"""Two clips of two objects each: the loss, a mean over valid (clip, frame, object), then averages the two
clips' means exactly as DDP averages the ranks' gradients. Different prompt kinds per clip leave different
parameters unused on each rank (find_unused_parameters is on: everything trains)."""


def _clips() -> list[VideoSample]:
    """The fixed global batch: 2 clips of 2 frames at 128 px, random frames, a drifting square per object."""
    gen = torch.Generator().manual_seed(0)
    clips = []
    for b, kinds in enumerate(CLIP_PROMPTS):
        masks = torch.zeros(2, len(kinds), SIZE, SIZE)
        for j in range(len(kinds)):
            y, x = (int(v) for v in torch.randint(8, SIZE - 48, (2,), generator=gen))
            for t in range(2):
                masks[t, j, y + 2 * t : y + 2 * t + 32, x + 3 * t : x + 3 * t + 32] = 1.0
        clips.append(
            VideoSample(
                images=torch.randn(2, 3, SIZE, SIZE, generator=gen),
                masks=masks,
                ignore=torch.zeros(2, SIZE, SIZE, dtype=torch.bool),
                prompts=prompts_from_masks(masks[0], kinds),
                video_name=f"clip_{b}",
                frame_indices=torch.arange(2),
                object_ids=torch.arange(1, len(kinds) + 1),
                orig_size=(SIZE, SIZE),
                num_video_frames=2,
                seed=b,
            )
        )
    return clips


class SaveGradients(L.Callback):
    """After the first backward (DDP has averaged the gradients by then), rank 0 saves every parameter's
    gradient (zeros where none) under its official name."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            grads = {
                name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
                for name, p in pl_module.model.named_parameters()
            }
            torch.save(grads, self.out)


def capture_gradients(
    out: Path, devices: int, object_chunk: int | None = None, memory_only: bool = False
) -> None:
    """One training step of SAM2LightningModule on the two clips: one process with both, or `devices` DDP
    processes (our runner's strategy) with one clip each; the gradients of the step go to `out`. With
    `object_chunk`, the step runs its objects in groups of that many (`model.object_chunk`); `memory_only`
    trains the memory modules alone (DDP without find_unused_parameters)."""
    model = [f"model.config={TINY_CONFIG}", f"model.image_size={SIZE}"]
    if object_chunk is not None:
        model.append(f"model.object_chunk={object_chunk}")
    if memory_only:
        model.append("model.trainable_modules=[memory_attention,memory_encoder]")
    cfg = load_config(
        DEMO_CONFIG, [*model, "data.clip_length=2", "trainer.strategy=ddp", "scheduler.enabled=false"]
    )
    if not memory_only:
        assert set(cfg.model.trainable_modules) == set(TRAINABLE_GROUPS)
    L.seed_everything(0, verbose=False)
    module = SAM2LightningModule(cfg)
    module.build(load_weights=False)  # random weights, the same in every process
    for m in module.model.modules():  # no dropout: the two runs would draw different masks
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "dropout_p"):
            m.dropout_p = 0.0
    # Lightning gives rank r the clip r (DistributedSampler, no shuffling); one process takes both
    loader = torch.utils.data.DataLoader(_clips(), batch_size=2 // devices, collate_fn=collate_videos)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=resolve_strategy(cfg) if devices > 1 else "auto",
        max_steps=1,
        default_root_dir=out.parent,  # final_metrics.json goes to the run folder, not the working directory
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SaveGradients(out)],
    )
    trainer.fit(module, train_dataloaders=loader)


def test_strategy_choice_and_world_size(tmp_path: Path, tiny_sam2: torch.nn.Module) -> None:
    base = [f"logging.root_dir={tmp_path}", "trainer.accelerator=cpu", "logging.progress_bar=none"]
    memory_only = load_config(
        DEMO_CONFIG, [*base, "trainer.strategy=ddp", "model.trainable_modules=[memory_attention]"]
    )
    assert resolve_strategy(memory_only)._ddp_kwargs["find_unused_parameters"] is False
    everything = load_config(DEMO_CONFIG, [*base, "trainer.strategy=ddp"])
    assert resolve_strategy(everything)._ddp_kwargs["find_unused_parameters"] is True

    trainer = make_trainer(load_config(DEMO_CONFIG, [*base, "trainer.strategy=ddp", "trainer.num_nodes=2"]))
    assert (trainer.num_nodes, trainer.world_size) == (2, 2)
    with pytest.raises(ConfigError, match="trainer.num_nodes"):
        load_config(DEMO_CONFIG, ["trainer.num_nodes=0"])

    # FSDP on CPU (Lightning alone refuses it there); clipping moves to a callback, every unit class exists
    with pytest.warns(UserWarning, match="validation pictures are not drawn"):
        fsdp = make_trainer(load_config(DEMO_CONFIG, [*base, "trainer.strategy=fsdp", "trainer.devices=2"]))
    assert isinstance(fsdp.strategy, FSDPStrategy) and fsdp.gradient_clip_val is None
    assert [c.max_norm for c in fsdp.callbacks if isinstance(c, FSDPGradientClipping)] == [1.0]
    assert fsdp_units() <= {type(m) for m in tiny_sam2.modules()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("object_chunk", "memory_only"),
    [(None, False), (1, False), (1, True)],
    ids=["all_objects", "object_chunk_1", "object_chunk_1_memory_only"],
)
def test_ddp_gradients_equal_one_process_on_the_same_global_batch(
    tmp_path: Path, object_chunk: int | None, memory_only: bool
) -> None:
    """With `object_chunk` only the DDP run is chunked: one process over all objects at once is the reference
    (each rank's groups accumulate locally; the one all-reduce must give that process's gradients). Memory-only
    training runs DDP without find_unused_parameters, whose reducer must hear from every parameter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    chunk = [] if object_chunk is None else [str(object_chunk), str(int(memory_only))]
    ddp = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "ddp.pt"), "2", *chunk],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    capture_gradients(tmp_path / "one.pt", devices=1, memory_only=memory_only)

    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "ddp.pt")
    assert one.keys() == two.keys()
    g1 = torch.cat([one[k].flatten() for k in one]).double()
    g2 = torch.cat([two[k].flatten() for k in one]).double()
    assert g1.norm() > 0
    assert (g1 - g2).norm() <= 1e-5 * g1.norm()  # measured: 2e-7
    for name in one:
        a, b = one[name].double(), two[name].double()
        assert (a - b).abs().max() <= 1e-6 * g1.abs().max(), name  # at the scale of the whole gradient
        # each tensor on its own, but for the key-projection biases, whose exact gradient is 0 (softmax ignores a
        # shift of its logits) and whose computed one is float noise
        if a.norm() > 1e-6 * g1.norm():
            assert (a - b).norm() <= 5e-5 * a.norm(), name  # measured: at most 6e-6


@pytest.mark.slow
def test_fsdp_under_torchrun_shards_and_its_checkpoint_exports(demo_data: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "sam2train.cli"]
    cmd += fit_args(tmp_path, data=demo_data, steps=2)  # demo.yaml validates first
    cmd += ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=fsdp"]
    cmd += ["scheduler.warmup_steps=0", "logging.viz_every_n_epochs=0"]
    env = {k: v for k, v in os.environ.items() if k != "SAM2TRAIN_RUN_VERSION"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**env, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    shards = re.search(
        r"FSDP over 2 processes: each holds at most ([\d,]+) of the ([\d,]+) parameters", proc.stdout
    )
    assert shards, proc.stdout[-2000:]
    most, total = (int(g.replace(",", "")) for g in shards.groups())
    assert total > 0 and most <= total / 2 + 1000  # half each, plus FSDP's padding per unit

    run = tmp_path / "demo" / "version_0"  # no logging.version: the next free version
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["global_steps"] == 2
    assert len(final["validation_history"]) == 2  # validate, then fit: the FSDP wrapper is set up once
    weights, _, _ = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "fsdp.pt")
    exported = torch.load(weights, weights_only=True)["model"]
    # the consolidated checkpoint holds tensors and plain types only: the safe unpickler reads it
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["sam2train_format"] >= 1 and "optimizer_states" in saved
    ckpt = saved["state_dict"]
    key = "image_encoder.trunk.blocks.0.attn.qkv.weight"  # inside an FSDP unit: saved whole, not flat
    assert exported[key].shape == ckpt[f"model.{key}"].shape and exported[key].dim() == 2
    assert torch.equal(exported[key], ckpt[f"model.{key}"])
    # AdamW's moments saved apart (torch's CPU gather alone would leave each holding exp_avg_sq's values)
    optimizer = saved["optimizer_states"][0]
    moments = optimizer["state"]
    assert any(bool((m["exp_avg"] < 0).any()) for m in moments.values())
    # and each pair belongs together: exp_avg = sum_i a_i g_i and exp_avg_sq = sum_i c_i g_i^2 over the same
    # gradients, so exp_avg^2 <= (sum_i a_i^2 / c_i) * exp_avg_sq elementwise (Cauchy-Schwarz)
    b1, b2 = optimizer["param_groups"][0]["betas"]
    for m in moments.values():
        bound = sum(((1 - b1) * b1**k) ** 2 / ((1 - b2) * b2**k) for k in range(int(m["step"])))
        assert bool((m["exp_avg"] ** 2 <= bound * m["exp_avg_sq"] * (1 + 1e-4)).all())


if __name__ == "__main__":
    chunk_arg = int(sys.argv[3]) if len(sys.argv) > 3 else None
    memory_arg = len(sys.argv) > 4 and sys.argv[4] == "1"
    capture_gradients(Path(sys.argv[1]), int(sys.argv[2]), object_chunk=chunk_arg, memory_only=memory_arg)
