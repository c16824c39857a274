"""Speed and memory options that change how SAM 2 computes, never what: activation checkpointing of the memory and
decoder modules (`model.activation_checkpointing`), per-frame checkpointing of a trainable image encoder
(`model.checkpoint_image_encoder`) and torch.compile of the image encoder (`model.compile_image_encoder`).

All act on the submodules in place, without editing SAM 2's code and without renaming a parameter: state dicts,
checkpoints and the trainable groups of `build.py` stay as they are.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from sam2train.errors import CompilerNotFoundError

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


# --------------------------------------------------------------------------------------------- checkpointing


def checkpointed_modules(model: SAM2Base) -> dict[str, torch.nn.Module]:
    """Name -> submodule that `enable_activation_checkpointing` wraps: each memory attention layer, the memory
    encoder and the mask decoder's two-way transformer (the modules that run once per frame and object)."""
    modules = {f"memory_attention.layers.{i}": layer for i, layer in enumerate(model.memory_attention.layers)}
    modules["memory_encoder"] = model.memory_encoder
    modules["sam_mask_decoder.transformer"] = model.sam_mask_decoder.transformer
    return modules


def _checkpointed_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The class's forward of `module`, recomputed in backward when it can build a graph (train mode, grad on).

    Non-reentrant checkpointing keeps the RNG state, so dropout in the recomputation draws what the forward drew
    and outputs and gradients are those of the plain forward. In eval mode or under no_grad nothing is saved for
    backward anyway: the forward runs as is, without checkpointing's bookkeeping.
    """
    forward = type(module).forward  # the instance attribute `forward` is this wrapper
    if not (module.training and torch.is_grad_enabled()):
        return forward(module, *args, **kwargs)
    return checkpoint(forward, module, *args, use_reentrant=False, **kwargs)


def _is_wrapped(module: torch.nn.Module) -> bool:
    wrapper = vars(module).get("forward")
    return isinstance(wrapper, functools.partial) and wrapper.func is _checkpointed_forward


def enable_activation_checkpointing(model: SAM2Base) -> list[str]:
    """Make the memory attention layers, the memory encoder and the mask decoder's transformer recompute their
    activations in backward (torch.utils.checkpoint, use_reentrant=False). Idempotent.

    The wrapper is an instance attribute `forward = partial(_checkpointed_forward, module)`: parameter names and
    the state dict are unchanged, and `copy.deepcopy` / pickling carry it over bound to the copy. Returns the
    names of the wrapped modules.
    """
    for name, module in checkpointed_modules(model).items():
        if _is_wrapped(module):
            continue
        if "forward" in vars(module):
            raise RuntimeError(
                f"{name}.forward is already replaced on the instance; refusing to wrap it again"
            )
        module.forward = functools.partial(_checkpointed_forward, module)
    return list(checkpointed_modules(model))


def disable_activation_checkpointing(model: SAM2Base) -> None:
    """Undo `enable_activation_checkpointing` (a module that is not wrapped is left alone)."""
    for module in checkpointed_modules(model).values():
        if _is_wrapped(module):
            del module.forward


def activation_checkpointing_enabled(model: SAM2Base) -> bool:
    """Whether every module of `checkpointed_modules` is wrapped."""
    return all(_is_wrapped(m) for m in checkpointed_modules(model).values())


# --------------------------------------------------------------------------------------------- image encoder

# An instance attribute of the image encoder (kept by deepcopy and pickling), read by `run_image_encoder`
_ENCODER_FLAG = "sam2train_checkpoint_frames"


def enable_image_encoder_checkpointing(model: SAM2Base) -> None:
    """Make `run_image_encoder` run a trainable image encoder (trunk and neck) one frame at a time, each frame a
    checkpointed segment (`checkpointed_image_encoder`). Idempotent; names and the state dict are unchanged.

    Why whole frames rather than each Hiera block: checkpointing block by block still keeps every block's input
    for every frame of the clip, so memory still grows with the clip length; a frame segment keeps only the
    frame (its outputs are kept by the modules that read them anyway) and backward rebuilds one frame's
    activations at a time.
    """
    setattr(model.image_encoder, _ENCODER_FLAG, True)


def disable_image_encoder_checkpointing(model: SAM2Base) -> None:
    """Undo `enable_image_encoder_checkpointing`."""
    vars(model.image_encoder).pop(_ENCODER_FLAG, None)


def image_encoder_checkpointing_enabled(model: SAM2Base) -> bool:
    """Whether `enable_image_encoder_checkpointing` was applied to `model`."""
    return bool(vars(model.image_encoder).get(_ENCODER_FLAG, False))


def checkpointed_image_encoder(encoder: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """`encoder(images)` for images [F, 3, S, S], each frame a non-reentrant checkpoint segment: what the encoder
    computes for frame f is recomputed in backward when the gradient of frame f's features arrives. The output is
    the encoder's dict (`vision_features`, `vision_pos_enc`, `backbone_fpn`) with the frames concatenated again.

    A compiled encoder (`compile_image_encoder`) is called as it is, inside the segment: one graph for one frame.
    """
    outs = [checkpoint(encoder, images[f : f + 1], use_reentrant=False) for f in range(images.shape[0])]
    if len(outs) == 1:
        return outs[0]
    return {
        "vision_features": torch.cat([o["vision_features"] for o in outs]),
        "vision_pos_enc": [torch.cat(level) for level in zip(*(o["vision_pos_enc"] for o in outs))],
        "backbone_fpn": [torch.cat(level) for level in zip(*(o["backbone_fpn"] for o in outs))],
    }


# --------------------------------------------------------------------------------------------- compile


def _cpp_compiler() -> str | None:
    """The C++ compiler Inductor's CPU backend would use (CXX, else g++ / clang++), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # private; mirrors Inductor's own search

        return get_cpp_compiler()
    except (ImportError, AttributeError):
        return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")
    except Exception:  # torch._inductor.exc.InvalidCxxCompiler and what its search raises
        return None


def _c_compiler() -> str | None:
    """The C compiler Triton builds its launchers with (CC, else gcc / clang, as Triton looks), or None."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("clang")


def compile_image_encoder(
    model: SAM2Base, device: torch.device | str | None = None, **compile_kwargs: Any
) -> None:
    """torch.compile `model.image_encoder` in place (`nn.Module.compile`: parameter names and the state dict keep
    their keys, unlike wrapping in an OptimizedModule). Compilation happens on the first forward, once per input
    shape (the number of frames per call varies: after the second shape Dynamo compiles a dynamic graph).

    `device`: where the encoder will run (default: where its parameters are now); Lightning builds the model on
    CPU and moves it later, so pass the target device. `compile_kwargs` go to torch.compile (mode, dynamic,
    backend, ...). Raises CompilerNotFoundError, naming the config key, when the default Inductor backend would
    fail on its first forward for want of a C++ compiler (CPU) or a C compiler (CUDA, Triton).
    """
    encoder = model.image_encoder
    if device is None:
        device = next(encoder.parameters()).device
    _require_compiler(torch.device(device).type, "model.compile_image_encoder", compile_kwargs)
    _warm_position_encodings(model, device)
    encoder.compile(**compile_kwargs)


def _require_compiler(kind: str, key: str, compile_kwargs: dict[str, Any]) -> None:
    """CompilerNotFoundError naming `key` when the default Inductor backend would fail on the first forward on a
    `kind` device for want of a C++ compiler (CPU) or a C compiler (CUDA, Triton)."""
    if compile_kwargs.get("backend", "inductor") != "inductor":
        return
    if kind == "cpu" and _cpp_compiler() is None:
        raise CompilerNotFoundError(
            f"config key '{key}': torch.compile on CPU needs a C++ compiler and none was found (tried $CXX, "
            f"g++, clang++). Install one (e.g. apt-get install g++), point CXX at it, or set {key}: false"
        )
    if kind == "cuda" and _c_compiler() is None:
        raise CompilerNotFoundError(
            f"config key '{key}': torch.compile on CUDA (Triton) needs a C compiler and none was found (tried "
            f"$CC, gcc, clang). Install one, point CC at it, or set {key}: false"
        )


def compile_memory_attention(
    model: SAM2Base, device: torch.device | str | None = None, **compile_kwargs: Any
) -> None:
    """torch.compile `model.memory_attention` in place (`nn.Module.compile`, state dict keys unchanged), with
    dynamic shapes by default: its memory grows frame by frame (up to num_maskmem frames plus object pointers)
    and the object count varies, so one dynamic graph serves every call instead of one graph per length.
    `device` and `compile_kwargs` as `compile_image_encoder`."""
    module = model.memory_attention
    if device is None:
        device = next(module.parameters()).device
    _require_compiler(torch.device(device).type, "model.compile_memory_attention", compile_kwargs)
    module.compile(**{"dynamic": True, **compile_kwargs})


def memory_attention_compiled(model: SAM2Base) -> bool:
    """Whether `compile_memory_attention` was applied to `model.memory_attention`."""
    return getattr(model.memory_attention, "_compiled_call_impl", None) is not None


def _warm_position_encodings(model: SAM2Base, device: torch.device | str) -> None:
    """Fill the neck's positional-encoding cache for every level (Hiera: strides 4, 8, 16, 32) on `device`.
    SAM 2 fills it during the first forward, which changes what Dynamo guards on: without this the encoder
    would be compiled a second time on its second call."""
    neck = model.image_encoder.neck
    for level in range(len(neck.backbone_channel_list)):
        side = model.image_size // (4 * 2**level)
        neck.position_encoding(torch.empty(1, 1, side, side, device=device))


def image_encoder_compiled(model: SAM2Base) -> bool:
    """Whether `compile_image_encoder` (nn.Module.compile) was applied to `model.image_encoder`."""
    return getattr(model.image_encoder, "_compiled_call_impl", None) is not None
