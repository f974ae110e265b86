"""PGD attacks in L-inf, L2 and L1: search the p-ball around an input for a misclassified point.

An attack gives an UPPER bound on robust accuracy (every point it finds is a
real counterexample), where a certificate gives a lower bound. So on every
example certified => robust => correct, and a certified example that an attack
breaks is a soundness bug. Points stay in the ball's domain: the pixel range
[0, 1] (the valid images, a subset of the ball, which every Lipschitz
certificate covers whole and IBP covers within the same range), or the whole
ball when the domain is None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import certificates
import lipschitz
from lipschitz import Ball
from mnist_data import EVAL_BATCH, Split
L1_STEP_FRACTION = 0.01  # an L1 step moves this fraction of the coordinates (at least one)


def attack_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Minus the smallest gap, max_{j != y} f_j - f_y, per row: >= 0 exactly when some class ties or beats y."""
    label_gaps, others = certificates.gaps(logits, labels)
    return -label_gaps.masked_fill(~others, float("inf")).amin(dim=1)


def lp_project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Euclidean projection of each row onto the p-ball ||delta||_p <= eps (eps: (n, 1)).

    L-inf: clamp. L2: rescale rows outside. L1: soft-threshold
    (`lipschitz.project_rows_l1_ball`).
    """
    lipschitz.check_norm(norm)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    if norm == "l2":
        length = delta.norm(dim=1, keepdim=True)
        return delta * torch.where(length > eps, eps / length.clamp_min(1e-30), torch.ones_like(length))
    return lipschitz.project_rows_l1_ball(delta, eps)


def lp_ascent_direction(grad: torch.Tensor, norm: str, movable: torch.Tensor) -> torch.Tensor:
    """A step of unit p-norm that raises a function with gradient `grad` fastest, to first order.

    L-inf: sign(grad). L2: grad / ||grad||_2. L1: the steepest vertex, spread
    over the top `L1_STEP_FRACTION` of the coordinates that can still move
    (`movable`), so the search does not stall on one coordinate at the domain's edge.
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
    count = max(1, math.ceil(L1_STEP_FRACTION * grad.shape[1]))
    score = torch.where(movable, grad.abs(), torch.zeros_like(grad))
    top = score.topk(count, dim=1).indices
    direction = torch.zeros_like(grad)
    return direction.scatter(1, top, grad.gather(1, top).sign() / count)


def lp_random_start(
    shape: torch.Size, eps: torch.Tensor, norm: str, generator: torch.Generator
) -> torch.Tensor:
    """A random point of the p-ball of radius eps (n, 1) around 0: uniform in the cube, or a random direction and length."""
    if norm == "linf":
        return (2 * torch.rand(shape, generator=generator, dtype=eps.dtype, device=eps.device) - 1) * eps
    if norm == "l2":
        direction = torch.randn(shape, generator=generator, dtype=eps.dtype, device=eps.device)
    else:
        uniform = torch.rand(shape, generator=generator, dtype=eps.dtype, device=eps.device)
        direction = -torch.log1p(-uniform) * torch.randn(shape, generator=generator, dtype=eps.dtype,
                                                          device=eps.device).sign()
    length = torch.rand((shape[0], 1), generator=generator, dtype=eps.dtype, device=eps.device) * eps
    return direction * length / lipschitz.vector_norm(direction, norm)[:, None].clamp_min(1e-30)


def into_ball(delta: torch.Tensor, xs: torch.Tensor, radius: torch.Tensor, ball: Ball) -> torch.Tensor:
    """delta projected onto the p-ball of `radius` (n, 1), then x + delta clamped to the domain (staying in the ball)."""
    delta = lp_project(delta, radius, ball.norm)
    return delta if ball.domain is None else (xs + delta).clamp(*ball.domain) - xs


def movable_coordinates(grad: torch.Tensor, z: torch.Tensor, domain: tuple[float, float] | None) -> torch.Tensor:
    """The coordinates that the gradient's sign would move without leaving the domain."""
    if domain is None:
        return torch.ones_like(grad, dtype=torch.bool)
    return ((grad > 0) & (z < domain[1])) | ((grad < 0) & (z > domain[0]))


def ascend(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    xs: torch.Tensor,
    ys: torch.Tensor,
    delta: torch.Tensor,
    radius: torch.Tensor,
    ball: Ball,
    steps: int,
    step: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` projected ascent steps on `attack_loss` from xs + delta: per row, the highest loss seen and its x'."""
    best = torch.full((len(xs),), float("-inf"), dtype=xs.dtype, device=xs.device)
    found = xs.clone()
    for iteration in range(steps + 1):
        delta.requires_grad_(True)
        z = xs + delta
        loss = attack_loss(logits_of(z), ys)
        better = loss.detach() > best
        found[better], best[better] = z.detach()[better], loss.detach()[better]
        if iteration == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            direction = lp_ascent_direction(grad, ball.norm, movable_coordinates(grad, z, ball.domain))
            delta = into_ball(delta + step * radius * direction, xs, radius, ball)
    return best, found


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    ball: Ball,
    steps: int = 50,
    restarts: int = 5,
    seed: int = 0,
    relative_step: float | None = None,
    batch_size: int = EVAL_BATCH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on `attack_loss` inside the ball (cut to its domain) around each row of x.

    Returns (broken, found): found[i] is the x' of highest loss seen
    (x itself included), and broken[i] says that another class ties or beats
    labels[i] there. The first restart starts at x, the others at random points
    of the ball; each restart attacks only the examples not broken yet. Each of
    `steps` steps moves by relative_step * eps (default 2.5 / steps, Madry et
    al.) along `lp_ascent_direction`, then projects onto the ball and clamps to
    the domain (which keeps it in the ball). Model parameters get no gradient.
    """
    x = x.flatten(1)
    eps_rows = ball.radii(x)
    step = 2.5 / steps if relative_step is None else relative_step
    params = {name: p.detach() for name, p in model.named_parameters()}
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best = torch.full((len(x),), float("-inf"), dtype=x.dtype, device=x.device)
    found = x.clone()
    for restart in range(restarts):
        for start in range(0, len(x), batch_size):
            index = torch.arange(start, min(start + batch_size, len(x)), device=x.device)
            index = index[best[index] < 0]
            if not len(index):
                continue
            xs, radius = x[index], eps_rows[index][:, None]
            if restart == 0:
                delta = torch.zeros_like(xs)
            else:
                delta = into_ball(lp_random_start(xs.shape, radius, ball.norm, generator), xs, radius, ball)
            loss, z = ascend(lambda v: torch.func.functional_call(model, params, (v,)), xs, labels[index], delta,
                             radius, ball, steps, step)
            better = loss > best[index]
            found[index[better]], best[index[better]] = z[better], loss[better]
    return best >= 0, found


@dataclass(frozen=True)
class Counterexample:
    """A test example and an input in its ball, inside the domain, that the float32 network misclassifies: how it
    was found ("pgd", "milp", or "clean": the example itself) and what the network predicts there."""

    index: int
    label: int
    original: torch.Tensor
    perturbed: torch.Tensor
    predicted: int
    found_by: str


def float32_inside(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """A point rounded to float32 and moved into the float64 box [lower, upper], each end itself rounded inward:
    the float32 input that the network will see, inside the ball."""
    low32, high32 = lower.float(), upper.float()
    low32 = torch.where(low32.double() < lower, torch.nextafter(low32, torch.tensor(math.inf)), low32)
    high32 = torch.where(high32.double() > upper, torch.nextafter(high32, torch.tensor(-math.inf)), high32)
    return torch.maximum(torch.minimum(values.float(), high32), low32)


@torch.no_grad()
def counterexamples(model: nn.Module, split: Split, ball: Ball, broken: torch.Tensor, found: torch.Tensor,
                    found_by: str, limit: int | None = None) -> dict[int, Counterexample]:
    """The attack's points for the `broken` examples, rounded to float32 inside the exact box of the ball and kept,
    by index, where the float32 network predicts another class (a tie is not a flip); the first `limit` of them
    when given."""
    kept: dict[int, Counterexample] = {}
    for index in broken.nonzero().flatten().tolist():
        if limit is not None and len(kept) == limit:
            break
        original = split.images[index].cpu()
        lower, upper = (end[0] for end in ball.box(original[None].double()))
        point = float32_inside(found[index].double().cpu(), lower, upper)
        predicted = int(model(point[None].to(split.images.device)).argmax(dim=1))
        label = int(split.labels[index])
        if predicted != label:
            kept[index] = Counterexample(index, label, original, point, predicted, found_by)
    return kept
