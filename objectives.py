"""Training objectives: how one batch's loss is built from the model's logits and bounds.

    ce      cross-entropy + lc_penalty * soft max of the logit bounds (the demo);
    lmt     Lipschitz-margin training: each wrong logit j is raised by eps * T[y, j]
            before the cross-entropy, T the `margin` certificate's thresholds, so
            the net is trained on what `certify.py --method margin` checks;
    hinge   a multi-class hinge on the certified margins f_y - f_j - eps * T[y, j];
    ibp     cross-entropy of IBP's worst-case logits over the eps-ball, mixed with
            the clean cross-entropy (Gowal et al. 2018), certified by `--method ibp`.

Every objective adds the demo's penalty, so `--lc_penalty 0` removes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import lipschitz
from certify import lp_pair_thresholds
from mnist_data import PIXEL_RANGE
from models import LipschitzMLP

LOSSES = ("ce", "lmt", "hinge", "ibp")
# batch_loss, or batch_loss under torch.compile
LossFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Schedule:
    """Where training stands: the radius to train at now, and the weight of the clean loss.

    The radius ramps linearly from 0 to eps over the first `ramp` epochs
    (`progress` counts epochs, fractions included); the clean weight falls from
    1 to 0.5 alongside (Gowal et al. 2018). Without a ramp both start at their end.
    """

    eps: float
    clean_weight: float

    @classmethod
    def at(cls, progress: float, eps: float, ramp: float) -> Schedule:
        share = 1.0 if ramp <= 0 else min(1.0, progress / ramp)
        return cls(eps * share, 1.0 - 0.5 * share)


def worst_case_logits(pair_lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits z with z_y = 0 and z_j = -(lower bound of f_y - f_j): the worst case IBP allows."""
    rows = pair_lower[torch.arange(len(labels), device=labels.device), labels]
    return -rows  # rows[y] = f_y - f_y = 0 exactly, so z_y = 0


def batch_loss(
    model: LipschitzMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    norm: str,
    lc_penalty: float,
    schedule: Schedule,
    hinge_margin: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, class loss, logits, penalty bounds) of one batch under the objective `loss`."""
    logits = model(x)
    bounds = model.lp_penalty_bounds(norm)
    penalty = lc_penalty * lipschitz.soft_max_penalty(bounds)
    clean = F.cross_entropy(logits, y)
    if loss == "ce":
        return clean + penalty, clean, logits, bounds
    if loss in ("lmt", "hinge"):
        thresholds = lp_pair_thresholds(model.lp_bounds(norm), "margin")[y]
        thresholds = thresholds.scatter(1, y[:, None], 0.0)  # the true class is not raised
        if loss == "lmt":
            robust = F.cross_entropy(logits + schedule.eps * thresholds, y)
        else:
            gaps = logits.gather(1, y[:, None]) - logits - schedule.eps * thresholds
            others = torch.ones_like(gaps, dtype=torch.bool).scatter(1, y[:, None], False)
            robust = F.relu(hinge_margin - gaps)[others].view(len(y), -1).sum(dim=1).mean()
        return robust + penalty, clean, logits, bounds
    if loss == "ibp":
        pair_lower = model.ibp_pair_lower(x, schedule.eps, norm, PIXEL_RANGE)
        robust = F.cross_entropy(worst_case_logits(pair_lower, y), y)
        mixed = schedule.clean_weight * clean + (1 - schedule.clean_weight) * robust
        return mixed + penalty, clean, logits, bounds
    raise ValueError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
