"""Object-chunked training (`model.object_chunk`): the pass and the loss over groups of objects give the gradients
and the logged losses of the pass over all objects at once, with both losses, BPTT, extra conditioning frames,
correction clicks, an object appearing later, padded objects and two clips; through Lightning too (gradient
accumulation, a fit of 6 objects one at a time, a NaN in one group skipping the step)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import DEMO_CONFIG, TINY_CONFIG, fit_args, no_dropout, trainable_copy
from sam2train.batch import VideoBatch
from sam2train.cli import main
from sam2train.config import Config, PromptsConfig, load_config
from sam2train.data.demo import write_demo_dataset
from sam2train.errors import ConfigError
from sam2train.losses import LossOutput, build_loss
from sam2train.model.object_chunks import active_entries, narrow_to_objects, object_groups
from sam2train.model.video import run_video
from sam2train.train.chunked import object_chunked_backward
from sam2train.train.module import SAM2LightningModule

TOL = 1e-5
"""Largest relative error of a parameter's gradient (measured: at most about 1e-6)."""

META_PROMPTS = PromptsConfig(
    box_noise=0.1,
    max_cond_frames=2,
    frames_to_correct=2,
    num_correction_points=2,  # Meta's 7, fewer for time: every step is still supervised
    correction_from_gt_prob=0.1,
)


def schedule_batch(make_video_batch) -> VideoBatch:
    """Two clips of 4 frames: 3 objects (point, box, mask; the mask one appears on frame 2) and 1 object (box)
    padded to 3; clip 0 gets an extra conditioning frame and two corrected frames, clip 1 one corrected frame."""
    batch = make_video_batch(kinds=[["point", "box", "mask"], ["box"]], t=4, seed=4)
    batch.masks[0, :2, 2] = 0.0
    batch.prompts.masks[0, 2] = batch.masks[0, 2, 2]
    batch.prompt_frames = torch.tensor([[0, 0, 2], [0, 0, 0]])
    batch.cond_frames = torch.tensor([[3], [-1]])
    batch.correct_frames = torch.tensor([[0, 1], [2, -1]])
    batch.seeds = torch.tensor([7, 11])
    return batch


def _config(loss_type: str, chunk: int | None) -> Config:
    cfg = Config()
    return replace(
        cfg,
        model=replace(cfg.model, object_chunk=chunk, bptt=True),
        prompts=META_PROMPTS,
        loss=replace(cfg.loss, type=loss_type),
    )


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad if p.grad is not None else torch.zeros_like(p)).clone()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def unchunked_step(model, batch: VideoBatch, cfg: Config) -> tuple[LossOutput, dict[str, torch.Tensor]]:
    """Today's step (as `SAM2LightningModule.forward` and `compute_loss`): the loss and the gradients."""
    model.zero_grad(set_to_none=True)
    out = run_video(model, batch, bptt=cfg.model.bptt, prompts_cfg=cfg.prompts)
    loss = build_loss(cfg).video_loss(out, batch)
    loss.total.backward()
    return loss, _grads(model)


def chunked_step(model, batch: VideoBatch, cfg: Config) -> tuple[LossOutput, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = object_chunked_backward(model, build_loss(cfg), batch, cfg)
    return loss, _grads(model)


def assert_same_gradients(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> float:
    """Every parameter's gradient within TOL (relative), but for gradients that are float noise around an exact 0
    (the key-projection biases: softmax ignores a shift of its logits; measured norm 1e-10 of the whole
    gradient), whose difference must stay at that noise level of the whole gradient. Returns the worst relative
    error."""
    assert ref.keys() == got.keys()
    whole = float(torch.cat([g.flatten() for g in ref.values()]).double().norm())
    assert whole > 0
    worst = 0.0
    for name, a in ref.items():
        a, b = a.double(), got[name].double()
        diff = float((a - b).norm())
        if float(a.norm()) < 1e-8 * whole:
            assert diff <= 1e-8 * whole, (name, diff / whole)
            continue
        err = diff / float(a.norm())
        worst = max(worst, err)
        assert err <= TOL, (name, err)
    return worst


def assert_same_loss(ref: LossOutput, got: LossOutput) -> None:
    torch.testing.assert_close(got.total, ref.total.detach(), rtol=1e-6, atol=0)
    assert ref.terms.keys() == got.terms.keys()
    for name in ref.terms:
        torch.testing.assert_close(got.terms[name], ref.terms[name].detach(), rtol=1e-6, atol=1e-9)


def test_groups_and_active_entries_are_known_before_the_pass(tiny_sam2, make_video_batch) -> None:
    batch = schedule_batch(make_video_batch)
    groups = object_groups(batch, 2)
    assert [g.tolist() for g in groups] == [[[0, 1], [-1, -1]], [[2], [0]]]
    assert len(object_groups(batch, 1)) == 4 and len(object_groups(batch, 10)) == 1
    model = copy.deepcopy(tiny_sam2).eval()
    with torch.no_grad():
        out = run_video(model, batch)
        second = narrow_to_objects(batch, groups[1])
        part = run_video(model, second)
    assert torch.equal(active_entries(batch), out.active)
    # the second group: clip 0's third object (appearing on frame 2) and clip 1's object, alone on their clips
    assert second.shape == (2, 4, 1) and second.object_ids.tolist() == [[3], [1]]
    assert torch.equal(second.masks[0, :, 0], batch.masks[0, :, 2]) and second.images is batch.images
    for clip, slot in ((0, 2), (1, 0)):
        assert torch.equal(part.active[clip, :, 0], out.active[clip, :, slot])
        torch.testing.assert_close(
            part.low_res_logits[clip, :, 0], out.low_res_logits[clip, :, slot], atol=1e-5, rtol=0
        )


def test_streamed_validation_pass_in_object_groups_equals_all_at_once(tiny_sam2, make_video_batch) -> None:
    """`run_video(..., chunk=, object_chunk=)`, as validation runs with `model.object_chunk`: trackers of at most
    K objects on each streamed frame's shared features, the same outputs as one tracker for all."""
    batch = make_video_batch([["mask", "mask", "box"], ["point", "mask"]], t=4)
    model = copy.deepcopy(tiny_sam2).eval()
    with torch.no_grad():
        whole = run_video(model, batch, bptt=False, chunk=2)
        for k in (1, 2):
            part = run_video(model, batch, bptt=False, chunk=2, object_chunk=k)
            assert torch.equal(part.active, whole.active)
            torch.testing.assert_close(part.low_res_logits, whole.low_res_logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(part.iou_pred, whole.iou_pred, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["sam2train", "sam2"])
@pytest.mark.parametrize("frozen_encoder", [False, True])
def test_chunked_gradients_equal_unchunked(tiny_sam2, make_video_batch, loss_type, frozen_encoder) -> None:
    model = no_dropout(trainable_copy(tiny_sam2))
    if frozen_encoder:
        model.image_encoder.requires_grad_(False)
    batch = schedule_batch(make_video_batch)
    ref_loss, ref = unchunked_step(model, batch, _config(loss_type, None))
    assert ref_loss.total > 0
    for chunk in (1, 2):
        loss, got = chunked_step(model, batch, _config(loss_type, chunk))
        assert_same_loss(ref_loss, loss)
        assert_same_gradients(ref, got)
        if frozen_encoder:
            assert all(p.grad is None for p in model.image_encoder.parameters())
        else:
            assert model.image_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0


def test_config_key_is_checked_and_refused_with_fsdp(tmp_path: Path) -> None:
    assert load_config(DEMO_CONFIG, []).model.object_chunk is None
    assert load_config(DEMO_CONFIG, ["model.object_chunk=2"]).model.object_chunk == 2
    with pytest.raises(ConfigError, match="model.object_chunk"):
        load_config(DEMO_CONFIG, ["model.object_chunk=0"])
    from sam2train.train.chunked import check_object_chunk

    with pytest.raises(ConfigError, match="model.object_chunk"):
        check_object_chunk(load_config(DEMO_CONFIG, ["model.object_chunk=1", "trainer.strategy=fsdp"]))


class _SaveGradients(L.Callback):
    """The gradients of the first optimizer step (accumulated over its micro-batches) and the logged losses."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}
        self.logged: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = _grads(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append(float(trainer.callback_metrics["train/total"]))


def _lightning_gradients(
    root: Path,
    tiny_sam2,
    batches: list[VideoBatch],
    chunk: int | None,
    accumulate: int,
    plugins: list | None = None,
):
    cfg = load_config(
        DEMO_CONFIG,
        [
            f"model.config={TINY_CONFIG}",
            "model.image_size=128",
            "scheduler.enabled=false",
            "model.trainable_modules=[image_encoder,memory_attention,memory_encoder,sam_mask_decoder]",
            *([] if chunk is None else [f"model.object_chunk={chunk}"]),
        ],
    )
    cfg = replace(cfg, prompts=META_PROMPTS)
    module = SAM2LightningModule(cfg)
    module.model = no_dropout(trainable_copy(tiny_sam2))
    save = _SaveGradients()
    trainer = L.Trainer(
        default_root_dir=root,  # final_metrics.json goes there, not to the working directory
        accelerator="cpu",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        plugins=plugins,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[save],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    return save


def test_lightning_step_with_gradient_accumulation_equals_unchunked(
    tmp_path: Path, tiny_sam2, make_video_batch
) -> None:
    first = schedule_batch(make_video_batch)
    second = make_video_batch(kinds=[["mask", "point"]], t=4, seed=9)
    second.seeds = torch.tensor([3])
    ref = _lightning_gradients(tmp_path, tiny_sam2, [first, second], None, accumulate=2)
    got = _lightning_gradients(tmp_path, tiny_sam2, [first, second], 1, accumulate=2)
    assert_same_gradients(ref.grads, got.grads)
    assert got.logged == pytest.approx(ref.logged, rel=1e-6)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_steps_equal_unchunked(
    tmp_path: Path, tiny_sam2, make_video_batch, precision: str
) -> None:
    """Under 16-mixed the groups' backward passes are scaled by the GradScaler as Lightning's own (a missed
    scale would be off by 2**12); under both, autocast does not reach them."""
    from lightning.pytorch.plugins import MixedPrecision

    batch = make_video_batch(kinds=[["box", "mask"]], t=2, seed=6)
    batch.correct_frames, batch.seeds = torch.tensor([[1]]), torch.tensor([5])
    results = []
    for chunk in (None, 1):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if precision == "16-mixed" else None
        # 16-mixed on CPU with a scaler given: Lightning alone refuses it
        plugin = MixedPrecision(precision, "cpu", scaler=scaler)
        results.append(_lightning_gradients(tmp_path, tiny_sam2, [batch], chunk, 1, [plugin]))
    ref, got = results
    whole = torch.cat([g.flatten() for g in ref.grads.values()]).norm()
    diff = torch.cat([(got.grads[k] - g).flatten() for k, g in ref.grads.items()]).norm()
    # measured 9e-10 (16-mixed) and 6e-10 (bf16-mixed); single small tensors differ more (half-precision ops
    # over 1 object round differently from the same ops over 2), so the whole gradient is compared here
    assert diff <= 1e-6 * whole, float(diff / whole)
    assert got.logged == pytest.approx(ref.logged, rel=1e-6)


def test_fit_six_objects_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sam2train.train import chunked

    groups: list[int] = []  # objects of each group the training steps ran

    def counting_run_video(model, batch, **kwargs):
        groups.append(int(batch.valid[:, 0].sum()))
        return run_video(model, batch, **kwargs)

    monkeypatch.setattr(chunked, "run_video", counting_run_video)
    data = tmp_path / "six"
    write_demo_dataset(data, videos=2, frames=2, size=(64, 64), objects=6, seed=3, val_videos=0)
    extra = (
        "model.object_chunk=1",
        "data.max_objects=6",
        "trainer.validate_first=false",
        "data.val_path=null",
    )
    args = fit_args(tmp_path, *extra, data=data, val=False, steps=2, version="run")
    assert main(args) == 0
    assert (tmp_path / "demo" / "run" / "final_metrics.json").is_file()
    assert groups == [1] * 12  # 2 steps of one clip of 6 objects


def test_nan_in_one_group_skips_the_step(tmp_path: Path, tiny_sam2, make_video_batch, monkeypatch) -> None:
    calls = []
    criterion_cls = type(build_loss(Config()))
    video_loss = criterion_cls.video_loss

    def poisoned(self, out, batch, norms=None):
        result = video_loss(self, out, batch, norms)
        calls.append(1)
        if len(calls) == 2:  # the second group of the first step
            return LossOutput(result.total * float("nan"), result.terms)
        return result

    monkeypatch.setattr(criterion_cls, "video_loss", poisoned)
    batch = make_video_batch(kinds=[["mask", "box"]], t=2, seed=8)
    module_weights = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            module_weights.append({k: p.detach().clone() for k, p in pl_module.model.named_parameters()})

    cfg = load_config(
        DEMO_CONFIG,
        [
            f"model.config={TINY_CONFIG}",
            "model.image_size=128",
            "scheduler.enabled=false",
            "model.object_chunk=1",
        ],
    )
    from sam2train.train.guards import NonFiniteGuard

    module = SAM2LightningModule(cfg)
    module.model = no_dropout(trainable_copy(tiny_sam2))
    guard = NonFiniteGuard(max_bad_steps=3)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[guard, Watch()],
    )
    loader = torch.utils.data.DataLoader([batch, batch], batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    assert guard.skipped_steps == 1
    a, b = module_weights
    assert all(torch.equal(a[k], b[k]) for k in a)  # step 0 skipped
    assert len(calls) == 4  # two groups per step
