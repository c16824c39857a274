"""Activation checkpointing (memory modules, and a trainable image encoder frame by frame) and image-encoder
compilation change how SAM 2 computes, never what: same logits and gradients through `run_video`, no checkpointing
in eval / no_grad or of a frozen encoder, unchanged parameter names; a compiled encoder gives the same features and
compiles once, also inside the encoder's checkpointed segments."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from conftest import TINY_CONFIG, TINY_SIZE, trainable_copy
from sam2train.config import TRAINABLE_GROUPS, ModelConfig
from sam2train.model import apply_trainable, encode_frames, run_video
from sam2train.model import memory_saving as ms
from sam2train.model.build import build_for_training

# everything but the image encoder: its backward is slow and it is not checkpointed
TRAINABLE = [g for g in TRAINABLE_GROUPS if g != "image_encoder"]
KINDS = [["mask", "box"], ["point"]]  # a mask frame skips the decoder; boxes and points use it on frame 0


@pytest.fixture
def counted_checkpoint(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the class of every module that goes through torch.utils.checkpoint."""
    calls: list[str] = []
    real = ms.checkpoint

    def counting(fn, module, *args, **kwargs):
        calls.append(type(module).__name__)
        return real(fn, module, *args, **kwargs)

    monkeypatch.setattr(ms, "checkpoint", counting)
    return calls


def _loss(out) -> torch.Tensor:
    """A loss touching every output, with a non-uniform weight so that gradients are not symmetric."""
    w = torch.linspace(0.5, 1.5, out.mask_logits.shape[-1])
    scores = out.object_score_logits.clamp(-50, 50)
    return (out.mask_logits.sigmoid() * w).mean() + out.iou_pred.sum() + scores.sum() * 1e-2


def _forward_backward(model, batch) -> tuple[object, dict[str, torch.Tensor]]:
    torch.manual_seed(123)  # memory attention has dropout: both runs must draw the same
    out = run_video(model, batch)
    _loss(out).backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_keeps_logits_and_gradients(tiny_sam2, make_video_batch, counted_checkpoint) -> None:
    batch = make_video_batch(kinds=KINDS, t=3)
    plain = copy.deepcopy(tiny_sam2).train()
    apply_trainable(plain, TRAINABLE)
    ckpt = copy.deepcopy(plain)
    wrapped = ms.enable_activation_checkpointing(ckpt)
    assert ms.activation_checkpointing_enabled(ckpt) and not ms.activation_checkpointing_enabled(plain)
    assert {"memory_encoder", "sam_mask_decoder.transformer", "memory_attention.layers.0"} <= set(wrapped)

    # recomputation shows as calls of an inner module during backward
    fuser_calls: list[bool] = []
    ckpt.memory_encoder.fuser.register_forward_hook(lambda *_: fuser_calls.append(torch.is_grad_enabled()))

    out_p, grads_p = _forward_backward(plain, batch)
    torch.manual_seed(123)
    out_c = run_video(ckpt, batch)
    in_forward = len(fuser_calls)
    _loss(out_c).backward()
    grads_c = {n: p.grad for n, p in ckpt.named_parameters() if p.grad is not None}

    assert set(counted_checkpoint) == {"MemoryAttentionLayer", "MemoryEncoder", "TwoWayTransformer"}
    assert in_forward == 3  # one memory encoding per frame (all objects in one tracker)
    assert len(fuser_calls) > in_forward  # recomputed in backward (the last frame's memory gets no gradient)
    for name in ("mask_logits", "iou_pred", "object_score_logits", "multimask_logits"):
        torch.testing.assert_close(getattr(out_c, name), getattr(out_p, name), rtol=0, atol=1e-6)
    assert grads_p.keys() == grads_c.keys()
    assert any(k.startswith("memory_attention.layers.") for k in grads_p)
    assert any(k.startswith("memory_encoder.") for k in grads_p)
    assert any(k.startswith("sam_mask_decoder.transformer.") for k in grads_p)
    for name, grad in grads_p.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=0, atol=1e-6, msg=name)


def test_no_checkpointing_in_eval_or_without_grad(tiny_sam2, make_video_batch, counted_checkpoint) -> None:
    batch = make_video_batch(kinds=KINDS, t=2)
    plain = copy.deepcopy(tiny_sam2).eval()
    ckpt = copy.deepcopy(plain)
    ms.enable_activation_checkpointing(ckpt)
    with torch.no_grad():
        ref, out = run_video(plain, batch), run_video(ckpt, batch)
    torch.testing.assert_close(out.mask_logits, ref.mask_logits, rtol=0, atol=0)
    ckpt.train()
    with torch.no_grad():
        run_video(ckpt, batch)
    assert counted_checkpoint == []


def test_wrapping_keeps_names_and_follows_copies(tiny_sam2) -> None:
    model = copy.deepcopy(tiny_sam2)
    names = [n for n, _ in model.named_parameters()]
    keys = list(model.state_dict())
    first = ms.enable_activation_checkpointing(model)
    assert ms.enable_activation_checkpointing(model) == first  # idempotent
    assert [n for n, _ in model.named_parameters()] == names and list(model.state_dict()) == keys

    twin = copy.deepcopy(model)
    assert twin.memory_encoder.forward.args[0] is twin.memory_encoder  # bound to the copy, not the original
    clone = pickle.loads(pickle.dumps(model))
    assert clone.sam_mask_decoder.transformer.forward.args[0] is clone.sam_mask_decoder.transformer

    ms.disable_activation_checkpointing(model)
    assert not any("forward" in vars(m) for m in ms.checkpointed_modules(model).values())


def test_compile_missing_cpp_compiler_is_a_clear_error(tiny_sam2) -> None:
    from torch._inductor import config as inductor_config

    model = copy.deepcopy(tiny_sam2)
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
        with pytest.raises(ms.CompilerNotFoundError, match="model.compile_image_encoder.*C\\+\\+ compiler"):
            ms.compile_image_encoder(model, device="cpu")
    assert not ms.image_encoder_compiled(model)
    assert inductor_config.cpp.cxx[1] != "/nonexistent/c++"


def test_compiled_encoder_same_features_and_one_graph(tiny_sam2) -> None:
    """Dynamo's tracing with a counting backend (no code generation): fast. One graph for repeated calls (the
    positional-encoding cache is filled beforehand), names unchanged, features identical."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = copy.deepcopy(tiny_sam2).eval()
    keys = list(model.state_dict())
    ms.compile_image_encoder(model, backend=backend)
    assert ms.image_encoder_compiled(model) and list(model.state_dict()) == keys
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = encode_frames(tiny_sam2, images)
        outs = [encode_frames(model, images) for _ in range(3)]
    assert len(graphs) == 1
    for out in outs:
        for a, b in zip(out.feats + out.pos, ref.feats + ref.pos):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_encoder_inductor_cpu(tiny_sam2) -> None:
    """Inductor's CPU code generation for one 128 px frame (seconds for the tiny model, a minute for hiera-t,
    but it runs the C++ toolchain: slow lane); skipped only when no C++ compiler is installed, which
    `compile_image_encoder` reports as CompilerNotFoundError."""
    torch._dynamo.reset()
    model = copy.deepcopy(tiny_sam2).eval()
    try:
        ms.compile_image_encoder(model, device="cpu")
    except ms.CompilerNotFoundError as exc:
        pytest.skip(str(exc))
    images = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = encode_frames(tiny_sam2, images)
        out = encode_frames(model, images)
    for a, b in zip(out.feats, ref.feats):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ image encoder checkpointing


def _trunk_calls(model) -> list[bool]:
    """Records, for every call of the Hiera trunk, whether autograd is recording (recomputation in backward
    records; so does the forward)."""
    calls: list[bool] = []
    model.image_encoder.trunk.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    return calls


def _relative_errors(grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float((grads[n] - g).norm() / g.norm().clamp_min(1e-30)) for n, g in ref.items()}


def test_image_encoder_checkpointing_keeps_gradients(tiny_sam2, make_video_batch) -> None:
    """Every parameter of the tiny SAM 2 trains; the checkpointed encoder runs frame by frame and again in
    backward, and every gradient equals the plain one (relative error <= 1e-5)."""
    batch = make_video_batch(kinds=[["mask", "box"], ["point"]], t=2)
    plain = trainable_copy(tiny_sam2)
    ckpt = copy.deepcopy(plain)
    ms.enable_image_encoder_checkpointing(ckpt)
    assert ms.image_encoder_checkpointing_enabled(ckpt) and not ms.image_encoder_checkpointing_enabled(plain)
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    calls = _trunk_calls(ckpt)

    out_p, grads_p = _forward_backward(plain, batch)
    out_c, grads_c = _forward_backward(ckpt, batch)

    frames = batch.images.shape[0] * batch.images.shape[1]
    assert len(calls) == 2 * frames  # one frame per call, once forward and once recomputed in backward
    torch.testing.assert_close(out_c.mask_logits, out_p.mask_logits, rtol=0, atol=1e-5)
    assert grads_c.keys() == grads_p.keys() and any(k.startswith("image_encoder.trunk.") for k in grads_p)
    errors = _relative_errors(grads_c, grads_p)
    assert max(errors.values()) <= 1e-5, max(errors.items(), key=lambda kv: kv[1])


@pytest.mark.filterwarnings("ignore:model.checkpoint is null")
def test_frozen_or_eval_encoder_is_not_checkpointed(tiny_sam2) -> None:
    """`build_for_training` leaves a frozen encoder unmarked; a frozen encoder, even marked, runs once under
    no_grad, and an encoder in eval mode runs as one plain call."""

    base = {"config": TINY_CONFIG, "image_size": TINY_SIZE, "checkpoint_image_encoder": True}
    trained, _ = build_for_training(
        ModelConfig(**base, trainable_modules=["image_encoder", "memory_encoder"])
    )
    frozen, _ = build_for_training(ModelConfig(**base, trainable_modules=["memory_encoder"]))
    assert ms.image_encoder_checkpointing_enabled(trained) and not ms.image_encoder_checkpointing_enabled(
        frozen
    )

    ms.enable_image_encoder_checkpointing(frozen)  # marked anyway: still no graph, no segments
    images = torch.randn(2, 3, TINY_SIZE, TINY_SIZE, generator=torch.Generator().manual_seed(0))
    calls = _trunk_calls(frozen)
    feats = encode_frames(frozen, images)
    assert calls == [False] and not any(f.requires_grad for f in feats.feats[2:])
    calls = _trunk_calls(trained.eval())
    encode_frames(trained, images)
    assert calls == [True]  # eval mode: one call for both frames, as without the option


def test_image_encoder_checkpointing_with_compiled_encoder(tiny_sam2) -> None:
    """A compiled encoder runs inside the per-frame segments: one graph (one frame's shape), same gradients.
    Dynamo's tracing with a counting backend (no code generation), as above."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    plain = trainable_copy(tiny_sam2)
    model = copy.deepcopy(plain)
    ms.enable_image_encoder_checkpointing(model)
    ms.compile_image_encoder(model, backend=backend)
    images = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    grads = []
    for m in (plain, model):
        feats = encode_frames(m, images).feats
        sum((f * torch.linspace(0.5, 1.5, f.shape[-1])).square().mean() for f in feats).backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert len(graphs) == 1 and grads[0].keys() == grads[1].keys()
    assert max(_relative_errors(grads[1], grads[0]).values()) <= 1e-5
