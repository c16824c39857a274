"""The object-chunked training step (`model.object_chunk: K`): the video pass and the loss over groups of at most
K objects, one group after another, so memory grows with K instead of with the batch's objects.

In SAM 2 the objects of a clip meet only in the backbone features of its frames, and both losses are sums over
objects divided by counts known before the pass (`VideoLoss.normalisers`). So a step can

1. encode the clip once (`encode_clip`), keeping the encoder's graph, and hand the groups a detached copy of the
   features that collects their gradient;
2. for each group (`object_groups`): run its pass on the batch narrowed to its objects (`narrow_to_objects`,
   `run_video(features=)`), its share of the loss on those objects alone (`video_loss(norms=)` with the whole
   batch's counts) and its backward, which adds into the parameters' gradients and into the features' gradient,
   and frees the group's graph;
3. run the encoder's backward once, with the summed feature gradient (none when nothing before the features
   trains).

The shares sum to the loss of the whole batch, so the gradients are those of the unchunked step, up to float
rounding (dropout draws differ between the two). These backward passes run inside Lightning's training step, so
they do what Lightning's own backward would: divide by `accumulate_grad_batches`, scale by the GradScaler under
16-mixed, run outside autocast and, under DDP, without gradient sync (`block_backward_sync`). The training step
then returns `loss_with_every_parameter`: the total with a zero-valued term over every trainable parameter, whose
backward (Lightning's, synced) reduces each accumulated gradient once, DDP's reducer hearing from every parameter
whichever groups used it (no hang), and whose value the non-finite guard checks (a NaN in any group counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch

from sam2train.errors import ConfigError
from sam2train.losses import LossOutput
from sam2train.model.object_chunks import active_entries, narrow_to_objects, object_groups
from sam2train.model.video import FrameFeatures, encode_clip, run_video

if TYPE_CHECKING:
    import lightning as L
    from sam2.modeling.sam2_base import SAM2Base

    from sam2train.batch import VideoBatch
    from sam2train.config import Config
    from sam2train.losses.base import VideoLoss
    from sam2train.model.feature_cache import CachedEncoder

__all__ = ["check_object_chunk", "loss_with_every_parameter", "object_chunked_backward"]


def check_object_chunk(config: Config) -> None:
    """Refuse what object chunking cannot do: FSDP (its parameters are gathered per forward, and the groups'
    backward passes run inside it)."""
    if config.model.object_chunk is not None and config.trainer.strategy == "fsdp":
        raise ConfigError(
            "config key 'model.object_chunk' does not work with trainer.strategy=fsdp; use ddp, or "
            "model.object_chunk=null"
        )


def object_chunked_backward(
    model: SAM2Base,
    criterion: VideoLoss,
    batch: VideoBatch,
    config: Config,
    trainer: L.Trainer | None = None,
    encoder: CachedEncoder | None = None,
) -> LossOutput:
    """Forward and backward of one training batch in groups of `config.model.object_chunk` objects (see the
    module's docstring). The gradients are left in the parameters' `.grad` (scaled as `trainer` scales a loss;
    None: unscaled, no gradient sync). Returns the batch's loss: detached total and terms, equal to the unchunked
    ones."""
    features = encode_clip(model, batch, encoder=encoder)
    leaves = FrameFeatures(
        feats=[f.detach().requires_grad_(f.requires_grad) for f in features.feats],
        pos=features.pos,
        sizes=features.sizes,
    )
    norms = criterion.normalisers(batch, active_entries(batch))
    total: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = {}
    for slots in object_groups(batch, config.model.object_chunk or 1):
        group = narrow_to_objects(batch, slots)
        out = run_video(
            model,
            group,
            bptt=config.model.bptt,
            mask_prompt_passthrough=config.model.mask_prompt_passthrough,
            prompts_cfg=config.prompts,
            features=leaves,
        )
        loss = criterion.video_loss(out, group, norms)
        del out
        if loss.total.requires_grad:
            _backward(trainer, [_scaled(trainer, loss.total)])
        total = loss.total.detach() if total is None else total + loss.total.detach()
        for name, value in loss.terms.items():
            terms[name] = value.detach() if name not in terms else terms[name] + value.detach()
        del loss
    pairs = [(f, leaf.grad) for f, leaf in zip(features.feats, leaves.feats) if leaf.grad is not None]
    if pairs:  # the encoder (and the decoder's high-res projections) once, with the summed feature gradient
        _backward(trainer, [f for f, _ in pairs], [g for _, g in pairs])
    assert total is not None
    return LossOutput(total, terms)


def loss_with_every_parameter(total: torch.Tensor, parameters: Iterable[torch.nn.Parameter]) -> torch.Tensor:
    """`total` (detached) plus zero times one entry of every trainable parameter: the value is `total`, and
    its backward adds a zero gradient to every trainable parameter (see the module's docstring)."""
    zero = [(p.flatten()[0] * 0.0).to(total.dtype) for p in parameters if p.requires_grad and p.numel()]
    return sum(zero, start=total.detach())


def _scaled(trainer: L.Trainer | None, loss: torch.Tensor) -> torch.Tensor:
    """The loss as Lightning's automatic optimisation backpropagates it: divided by the micro-batches per step,
    scaled by the precision plugin's GradScaler when there is one (16-mixed)."""
    if trainer is None:
        return loss
    loss = loss / trainer.accumulate_grad_batches
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler.scale(loss) if scaler is not None else loss


def _backward(
    trainer: L.Trainer | None,
    tensors: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor] | None = None,
) -> None:
    """Backward of `tensors` (with `grads`) outside autocast and, under DDP, without gradient sync."""
    sync = getattr(trainer.strategy, "block_backward_sync", None) if trainer is not None else None
    device_type = tensors[0].device.type
    with sync() if sync is not None else contextlib.nullcontext():
        with torch.autocast(device_type=device_type, enabled=False):
            torch.autograd.backward(list(tensors), None if grads is None else list(grads))
