"""Training objectives: how one batch's loss is built from the model's logits and bounds.

    ce      cross-entropy + lc_penalty * soft max of the logit bounds (the demo);
    lmt     Lipschitz-margin training: each wrong logit j is raised by eps * T[y, j]
            before the cross-entropy, T the `margin` method's thresholds, so the
            net is trained on what `certify.py --method margin` checks;
    hinge   a multi-class hinge on the certified gaps f_y - f_j - eps * T[y, j],
            with target `hinge_target`;
    ibp     cross-entropy of IBP's worst-case logits over the eps-ball, mixed with
            the clean cross-entropy (Gowal et al. 2018), certified by `--method ibp`.

Every objective adds the demo's penalty, so `lc_penalty` 0 removes it. The
bounds are built once per batch, with power-iteration spectral norms in l2:
they train, they never certify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

import certificates
import ibp
import lipschitz
from errors import ConfigError
from lipschitz import Ball
from mnist_data import PIXEL_RANGE
from models import LipschitzMLP

LOSSES = ("ce", "lmt", "hinge", "ibp")


class BatchLoss(NamedTuple):
    """What one batch's objective gives the training step."""

    loss: torch.Tensor        # the objective, to minimise
    class_loss: torch.Tensor  # the clean cross-entropy
    logits: torch.Tensor
    threshold: torch.Tensor   # the global rule's threshold T from the penalty's bounds


LossFn = Callable[..., BatchLoss]  # batch_loss, or batch_loss under torch.compile


RAMP_SHAPES = ("linear", "smooth")


@dataclass(frozen=True)
class Objective:
    """What a batch's loss is: one of LOSSES, the norm of its bounds, the weight of the bound
    penalty, and the hinge loss's target gap; the part of a `training.Recipe` that `batch_loss` reads."""

    loss: str
    norm: str
    lc_penalty: float
    hinge_target: float


def ramp_share(fraction: float, shape: str, mid: float = 0.25, power: float = 4.0) -> float:
    """How far a ramp has gone, in [0, 1], at `fraction` of its length: linear, or smooth (auto_LiRPA's
    SmoothedScheduler: a * t^power up to `mid`, then the straight line that continues it with the same
    slope and ends at 1, which fixes a)."""
    fraction = min(1.0, max(0.0, fraction))
    if shape == "linear":
        return fraction
    scale = 1.0 / (mid ** power + power * mid ** (power - 1) * (1.0 - mid))
    if fraction <= mid:
        return scale * fraction ** power
    return min(1.0, scale * (mid ** power + power * mid ** (power - 1) * (fraction - mid)))


@dataclass(frozen=True)
class Schedule:
    """Where training stands: the radius to train at now, and the weight of the clean loss.

    After `warmup` epochs at radius 0, the radius ramps from 0 to eps over
    `ramp` epochs (`progress` counts epochs, fractions included), linearly or
    smoothly (`ramp_share`); the clean weight falls from 1 to `final_clean`
    alongside (1 to 0.5: Gowal et al. 2018). Without a ramp both start at their end.
    """

    eps: float
    clean_weight: float

    @classmethod
    def at(cls, progress: float, eps: float, ramp: float, warmup: float = 0.0, shape: str = "linear",
           final_clean: float = 0.5) -> Schedule:
        if ramp <= 0:
            share = 1.0 if progress >= warmup else 0.0
        else:
            share = ramp_share((progress - warmup) / ramp, shape)
        return cls(eps * share, 1.0 - (1.0 - final_clean) * share)


def worst_case_logits(gap_lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits z with z_y = 0 and z_j = -(lower bound of f_y - f_j): the worst case IBP allows."""
    rows = gap_lower[torch.arange(len(labels), device=labels.device), labels]
    return -rows  # rows[y] = f_y - f_y = 0 exactly, so z_y = 0


def robust_loss(
    model: LipschitzMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    logits: torch.Tensor,
    bounds: lipschitz.LogitBounds,
    objective: Objective,
    eps: float,
) -> torch.Tensor:
    """The certificate-aware part of the objectives lmt, hinge and ibp, at radius eps."""
    loss = objective.loss
    if loss == "ibp":
        gap_lower = ibp.gap_lower_bounds(model, x, Ball(bounds.norm, eps, PIXEL_RANGE))
        return F.cross_entropy(worst_case_logits(gap_lower, y), y)
    threshold = certificates.thresholds(bounds, "margin")[y]
    threshold = threshold.scatter(1, y[:, None], 0.0)  # the true class is not raised
    if loss == "lmt":
        return F.cross_entropy(logits + eps * threshold, y)
    if loss == "hinge":
        label_gaps, others = certificates.gaps(logits, y)
        shortfall = F.relu(objective.hinge_target - (label_gaps - eps * threshold))
        return shortfall[others].view(len(y), -1).sum(dim=1).mean()
    raise ConfigError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")


def batch_loss(
    model: LipschitzMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Objective,
    schedule: Schedule,
    logits: torch.Tensor | None = None,
) -> BatchLoss:
    """One batch's objective, its clean cross-entropy, logits, and the global threshold.
    `logits`: model(x), where the caller has computed it already (`models.BatchNormMLP.call_folded`)."""
    logits = model(x) if logits is None else logits
    bounds = model.logit_bounds(objective.norm, estimate=True, per_pair=objective.loss in ("lmt", "hinge"))
    penalty = objective.lc_penalty * lipschitz.soft_max_penalty(bounds.per_logit)
    clean = F.cross_entropy(logits, y)
    threshold = certificates.global_threshold(bounds).detach()
    if objective.loss == "ce":
        return BatchLoss(clean + penalty, clean, logits, threshold)
    robust = robust_loss(model, x, y, logits, bounds, objective, schedule.eps)
    if objective.loss == "ibp":
        robust = schedule.clean_weight * clean + (1 - schedule.clean_weight) * robust
    return BatchLoss(robust + penalty, clean, logits, threshold)
