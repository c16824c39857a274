"""Prompts simulated inside the forward pass, as Meta's `SAM2Train` does in training: correction clicks drawn from
the current error region, and prompts for extra conditioning frames drawn from that frame's ground truth.

Every draw comes from a torch Generator of the object (seeded from its clip's `seed`, which the dataset draws from
the sample's own generator, and its slot), so runs are reproducible, no two ranks or workers share a stream, and
an object's draws do not depend on the other objects tracked with it.
Clicks are drawn on the CPU; masks are [S, S] at the model input size, coordinates (x, y) in its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sam2train.batch import PROMPT_BOX, PROMPT_MASK, PROMPT_POINT, Prompts
from sam2train.data.prompts import noisy_box, pad_points


def sample_click(gt: torch.Tensor, pred: torch.Tensor | None, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """One click, uniform over the error region of `pred` against `gt` ([S, S] bool; pred None = empty).

    A false-negative pixel gives a positive click (label 1), a false-positive pixel a negative one (label 0), each
    error pixel with the same probability (Meta's `sample_random_points_from_errors`). Without any error the click
    is a negative one in the background (a positive one inside when the object covers the whole image).
    Returns ((x, y) float [2], label).
    """
    gt = gt.bool().cpu()
    pred = torch.zeros_like(gt) if pred is None else pred.bool().cpu()
    error = gt ^ pred
    if not bool(error.any()):
        error = ~gt if bool((~gt).any()) else gt
    ys, xs = torch.nonzero(error, as_tuple=True)
    k = int(torch.randint(0, len(xs), (), generator=g))
    y, x = int(ys[k]), int(xs[k])
    return torch.tensor([float(x), float(y)]), int(gt[y, x])


@dataclass
class Clicker:
    """Correction clicks for the n objects of one SAM call.

    num_points: clicks added one after another on a corrected frame
    from_gt_prob: probability that a click ignores the prediction and is drawn from the ground truth
    generators: one per object
    """

    num_points: int
    from_gt_prob: float
    generators: list[torch.Generator]

    def subset(self, index: torch.Tensor) -> Clicker:
        return Clicker(self.num_points, self.from_gt_prob, [self.generators[i] for i in index.tolist()])

    def next_clicks(
        self, gt: torch.Tensor, high_res_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One click per object from gt [n, S, S] bool and the current prediction [n, 1, S, S] logits.

        Returns point_coords [n, 1, 2] float and point_labels [n, 1] int32 on the logits' device.
        """
        coords, labels = [], []
        pred = (high_res_logits[:, 0] > 0).cpu()
        for i, g in enumerate(self.generators):
            from_gt = self.from_gt_prob > 0 and float(torch.rand((), generator=g)) < self.from_gt_prob
            xy, label = sample_click(gt[i], None if from_gt else pred[i], g)
            coords.append(xy)
            labels.append(label)
        device = high_res_logits.device
        return (
            torch.stack(coords)[:, None].to(device),
            torch.tensor(labels, dtype=torch.int32, device=device)[:, None],
        )


def prompts_from_ground_truth(
    kinds: torch.Tensor, gt: torch.Tensor, generators: list[torch.Generator], box_noise: float
) -> Prompts:
    """Prompts for an extra conditioning frame: each object prompted as on its first frame, from this frame's
    ground truth gt [n, S, S] bool (kinds [n]: the objects' prompt kinds).

    mask -> the ground-truth mask; box -> its box jittered by `box_noise`; point -> one click uniform inside.
    An object absent from the frame gets, unless mask-prompted, one negative click in the background.
    """
    n, size = gt.shape[0], gt.shape[-1]
    cpu = gt.bool().cpu()
    out_kind, boxes, coords, labels = [], torch.zeros(n, 4), [], []
    for i in range(n):
        kind = int(kinds[i])
        if kind == PROMPT_MASK:
            out_kind.append(PROMPT_MASK)
            coords.append(torch.zeros(0, 2))
            labels.append(torch.zeros(0, dtype=torch.long))
        elif kind == PROMPT_BOX and bool(cpu[i].any()):
            out_kind.append(PROMPT_BOX)
            boxes[i] = noisy_box(cpu[i], box_noise, generators[i])
            coords.append(torch.zeros(0, 2))
            labels.append(torch.zeros(0, dtype=torch.long))
        elif kind in (PROMPT_BOX, PROMPT_POINT):
            xy, label = sample_click(cpu[i], None, generators[i])
            out_kind.append(PROMPT_POINT)
            coords.append(xy[None])
            labels.append(torch.tensor([label]))
        else:
            raise ValueError(f"object {i} has no prompt kind ({kind}) to condition an extra frame with")
    point_coords, point_labels = pad_points(coords, labels)
    device = gt.device
    return Prompts(
        kind=torch.tensor(out_kind, dtype=torch.long, device=device),
        point_coords=point_coords.to(device),
        point_labels=point_labels.to(device),
        boxes=boxes.to(device),
        masks=gt.float().reshape(n, size, size),
    )
