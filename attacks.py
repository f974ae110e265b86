"""PGD and APGD attacks in L-inf, L2 and L1: search the p-ball around an input for a misclassified point.

`pgd` is plain projected gradient ascent on the smallest gap. `apgd` runs APGD
(Croce & Hein 2020) on several losses, skips what IBP proves and spends many
short restarts on the examples that come close to breaking: on the demo's two
checkpoints it breaks every digit that the standard AutoAttack breaks
(scripts/compare_autoattack.py). In L1 its steps are sparse and it projects
onto the L1 ball cut to the pixel range exactly, as L1-APGD does (Croce &
Hein 2021).

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
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import allowance
import certificates
import lipschitz
import rounding
from lipschitz import Ball
from mnist_data import EVAL_BATCH, Split
from models import LipschitzMLP, in_float64
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


def project_l1_box(delta: torch.Tensor, radius: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Each row of delta projected onto {d : ||d||_1 <= radius, low <= d <= high} (radius (n, 1), low <= 0 <= high).

    The Euclidean projection is d_i = sign(delta_i) min(max(|delta_i| - t, 0),
    cap_i), cap_i the room in delta_i's direction, for the least t >= 0 whose
    L1 norm is within the radius. That norm falls as t grows, so t is found by
    bisection, kept on the side within the radius (to 2^-L1_BISECTIONS of its
    range: an attack needs no more). The target is the radius less a relative
    1e-6 and the rounding of x + d in float32 (2^-24 per coordinate of [0, 1]);
    a row whose norm, summed in float64, still exceeds it is scaled down
    (towards 0, so it stays in the box). So x + d, as the network sees it,
    stays in the ball.
    """
    size, sign = delta.abs(), delta.sign()
    cap = torch.where(delta > 0, high, -low)
    target = radius.double() * (1 - 1e-6) - delta.shape[1] * 2.0 ** -24

    def norm_at(threshold: torch.Tensor) -> torch.Tensor:
        return (size - threshold).clamp(min=0).minimum(cap).sum(dim=1, keepdim=True, dtype=torch.float64)

    outside = norm_at(torch.zeros_like(radius)) > target
    rows = outside.nonzero()[:, 0]
    threshold = torch.zeros_like(radius)
    if len(rows):
        size_o, cap_o, target_o = size[rows], cap[rows], target[rows]
        low_t, high_t = torch.zeros_like(radius[rows]), size_o.amax(dim=1, keepdim=True)
        for _ in range(L1_BISECTIONS):
            middle = (low_t + high_t) / 2
            over = (size_o - middle).clamp(min=0).minimum(cap_o).sum(dim=1, keepdim=True, dtype=torch.float64) > target_o
            low_t, high_t = torch.where(over, middle, low_t), torch.where(over, high_t, middle)
        threshold[rows] = high_t
    moved = (size - threshold).clamp(min=0).minimum(cap)
    length = moved.sum(dim=1, keepdim=True, dtype=torch.float64)
    moved = moved * torch.where(length > target, target / length, torch.ones_like(length)).to(moved.dtype)
    return sign * moved


def l1_sparse_direction(grad: torch.Tensor, movable: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """A step of unit L1 norm along sign(grad) on each row's `count` (n, 1) movable coordinates of largest |grad|
    (ties kept, so at least that many): L1-APGD's sparse step."""
    score = torch.where(movable, grad.abs(), torch.zeros_like(grad))
    count = count.clamp(1, grad.shape[1])
    ordered = score.topk(int(count.max()), dim=1).values
    chosen = (score >= ordered.gather(1, count - 1)) & (score > 0)
    return torch.where(chosen, grad.sign(), torch.zeros_like(grad)) / chosen.sum(dim=1, keepdim=True).clamp(min=1)


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
    side_by_side: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradient ascent on `attack_loss` inside the ball (cut to its domain) around each row of x.

    Returns (broken, found): found[i] is the x' of highest loss seen
    (x itself included), and broken[i] says that another class ties or beats
    labels[i] there. The first restart starts at x, the others at random points
    of the ball; each restart attacks only the examples not broken yet. Each of
    `steps` steps moves by relative_step * eps (default 2.5 / steps, Madry et
    al.) along `lp_ascent_direction`, then projects onto the ball and clamps to
    the domain (which keeps it in the ball). Model parameters get no gradient.
    With `side_by_side`, the random restarts run at once as copies of the rows
    the first leaves unbroken, `batch_size` copies at a time: the same attack,
    far fewer Python steps when the rows are few and the restarts many, but
    other random starts than one restart after another. With `progress`, a
    bar on stderr counts the restarts.
    """
    x = x.flatten(1)
    eps_rows = ball.radii(x)
    step = 2.5 / steps if relative_step is None else relative_step
    params = {name: p.detach() for name, p in model.named_parameters()}
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best = torch.full((len(x),), float("-inf"), dtype=x.dtype, device=x.device)
    found = x.clone()

    def logits_of(v: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (v,))

    for restart in tqdm(range(1 if side_by_side else restarts), desc="pgd", unit="restart", disable=not progress,
                        leave=False):
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
            loss, z = ascend(logits_of, xs, labels[index], delta, radius, ball, steps, step)
            better = loss > best[index]
            found[index[better]], best[index[better]] = z[better], loss[better]
    copies = restarts - 1 if side_by_side else 0
    for chunk in (best < 0).nonzero()[:, 0].split(max(1, batch_size // max(copies, 1))) if copies else []:
        index = chunk.repeat_interleave(copies)
        xs, radius = x[index], eps_rows[index][:, None]
        delta = into_ball(lp_random_start(xs.shape, radius, ball.norm, generator), xs, radius, ball)
        loss, z = ascend(logits_of, xs, labels[index], delta, radius, ball, steps, step)
        winner = loss.view(-1, copies).argmax(dim=1) + torch.arange(0, len(index), copies, device=x.device)
        better = loss[winner] > best[chunk]
        found[chunk[better]], best[chunk[better]] = z[winner][better], loss[winner][better]
    return best >= 0, found


# APGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
# parameter-free attacks", ICML 2020): step-size schedule, momentum and best-point restarts.
APGD_MOMENTUM = 0.75  # weight of the new step against the previous one, after the first step
APGD_RHO = 0.75  # a checkpoint halves the step when at most this fraction of its steps raised the loss
APGD_FIRST_CHECKPOINT = 0.22  # the first checkpoint, as a fraction of the steps
APGD_CHECKPOINT_DECAY = 0.03  # each interval between checkpoints is this fraction shorter than the one before
APGD_MIN_INTERVAL = 0.06  # down to this fraction of the steps
DLR_EPSILON = 1e-12  # keeps the DLR loss finite when its denominator vanishes
IBP_BATCH = 2_000  # examples per IBP bound: caps the float64 intermediates...
IBP_UNITS = 2_048_000  # ...and examples times the widest layer's units (a CNN's layers are some 6,000 wide)
L1_BISECTIONS = 24  # halvings of the L1 projection's threshold: 2^-24 of its range
# L1-APGD's own schedule (Croce & Hein 2021, as AutoAttack's L1 version runs it): a step first moves this
# fraction of the coordinates; a checkpoint every L1_CHECKPOINT of the steps sets the count to the best point's
# nonzero coordinates over L1_SPARSITY_SHRINK; where that count shrank by 5 % or more the step goes back to
# its largest, L1_LARGEST_STEP times the radius, from the best point; elsewhere it shrinks by
# L1_SPARSITY_SHRINK, down to a tenth of the largest. No momentum.
L1_INITIAL_SPARSITY = 0.2
L1_SPARSITY_SHRINK = 1.5
L1_CHECKPOINT = 0.04
L1_LARGEST_STEP = 1.0
# In L1 a run first searches balls 3 and 2 times wider, each from the last one's best point, then the ball
# itself (Croce & Hein 2021): (radius factor, share of the steps). Only the last one's points are reported.
L1_WIDER_BALLS = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))
STARTS = ("centre", "random", "vertex")
APGD_COMPACT_FRACTION = 0.05  # rows leave a run between checkpoints once this fraction of them is broken


@dataclass(frozen=True)
class APGDStage:
    """One stage of `apgd`: `runs` APGD runs of `steps` steps on `loss`, on every example not broken yet.

    loss: "ce" (cross-entropy of the label, APGD-CE), "margin" (`attack_loss`,
    the best other logit minus the label's), "dlr-t" (targeted difference of
    logits ratio, APGD-T) or "margin-t" (targeted margin f_t - f_y). A
    targeted loss runs once per rival class t, the `targets` most likely
    first (ranked at x). start: where runs begin: "centre" (the
    first run at x, the others at uniform random points of the ball),
    "random" (every run at a uniform random point) or "vertex" (every run at a
    random corner of the L-inf ball, or a random point of the L2 sphere); in
    L1 see `apgd_start`.
    initial_step: the first step size, times the radius (APGD: 2).
    focus: when set, the stage attacks only the rows that earlier stages
    brought within this fraction of their margin at x from breaking:
    best attack_loss >= focus * attack_loss(x) (both negative).
    """

    loss: str
    steps: int = 100
    runs: int = 1
    targets: int = 0
    start: str = "centre"
    initial_step: float = 2.0
    focus: float | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown APGD loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.start not in STARTS:
            raise ValueError(f"unknown APGD start {self.start!r}: choose one of {', '.join(STARTS)}")
        if self.steps < 1 or self.runs < 1 or self.initial_step <= 0 or (self.focus is not None and self.focus < 0):
            raise ValueError(f"an APGD stage needs steps >= 1, runs >= 1, a positive step and focus >= 0: {self}")
        if (self.targets > 0) != self.loss.endswith("-t"):
            raise ValueError(f"targeted losses, and only they, take targets >= 1: {self}")


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the label, per row: APGD-CE's loss. `targets` is ignored."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """`attack_loss`, max_{j != y} f_j - f_y per row (the loss of `pgd`). `targets` is ignored."""
    return attack_loss(logits, labels)


def targeted_margin_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """f_t - f_y per row: >= 0 exactly when the target ties or beats the label."""
    return logits.gather(1, targets[:, None])[:, 0] - logits.gather(1, labels[:, None])[:, 0]


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted difference of logits ratio, per row: (f_t - f_y) / (f_(1) - (f_(3) + f_(4)) / 2) (APGD-T).

    f_(k) is the k-th largest logit. The denominator makes the loss invariant
    to the scale of the logits; with fewer than 4 classes it is undefined and
    the loss is the plain margin f_t - f_y.
    """
    margin = targeted_margin_loss(logits, labels, targets)
    if logits.shape[1] < 4:
        return margin
    top = logits.topk(4, dim=1).values
    return margin / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + DLR_EPSILON)


Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
LOSSES: dict[str, Loss] = {"ce": cross_entropy_loss, "margin": margin_loss, "dlr-t": targeted_dlr_loss,
                           "margin-t": targeted_margin_loss}

# APGD-CE and APGD-T over 9 targets, 100 steps each, as AutoAttack runs them (from x, where AutoAttack starts
# from a random point).
APGD_BASE: tuple[APGDStage, ...] = (APGDStage("ce"), APGDStage("dlr-t", targets=9))
# The default: APGD_BASE; then 4 short runs from random corners on each row's likeliest rival; then, on the
# rows brought within 5 % of their margin at x from breaking, many more runs from random corners: targeted at
# the three likeliest rivals, with the cross-entropy, and untargeted. Those break the narrow counterexamples of
# GroupSort nets that AutoAttack's Square finds and one APGD run from x misses: each run finds one with a
# chance of a few percent to 50 %, hence the many runs, spent only where they pay. In L2 some such digits
# break only from a rival below the likeliest (docs/results.md, the attack in L2).
APGD_DEFAULT: tuple[APGDStage, ...] = APGD_BASE + (
    APGDStage("margin-t", steps=50, runs=4, targets=1, start="vertex", initial_step=0.1),
    APGDStage("dlr-t", runs=32, targets=3, start="vertex", focus=0.05),
    APGDStage("ce", runs=16, start="vertex", focus=0.05),
    APGDStage("margin", steps=50, runs=40, start="vertex", initial_step=0.1, focus=0.05),
)
# In L1, APGD-CE runs 10 times from random starts, as AutoAttack's L1 version runs it 5 times: there one run from
# x missed digits of the GroupSort net that AutoAttack breaks, 5 runs still missed some, and 10 missed none on
# the first 300 digits at radius 3 with seed 0 (2 with seed 1; docs/results.md).
APGD_L1: tuple[APGDStage, ...] = (APGDStage("ce", runs=10, start="random"),) + APGD_DEFAULT[1:]


def apgd_intervals(steps: int) -> list[int]:
    """The lengths of the intervals between APGD's checkpoints, which sum to at most `steps`.

    The first is 22 % of the steps; each next one is 3 % of the steps shorter,
    down to 6 % (Croce & Hein 2020, section 3.2), each at least one step.
    """
    interval = max(int(APGD_FIRST_CHECKPOINT * steps), 1)
    decay, shortest = max(int(APGD_CHECKPOINT_DECAY * steps), 1), max(int(APGD_MIN_INTERVAL * steps), 1)
    intervals, total = [], 0
    while total + interval <= steps:
        intervals.append(interval)
        total += interval
        interval = max(interval - decay, shortest)
    return intervals


@rounding.exact_arithmetic()
def ibp_open_rivals(model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball) -> torch.Tensor:
    """(n, classes): the classes other than the label that IBP cannot rule out anywhere in the ball.

    A class is ruled out when IBP's lower bound of f_y - f_j, rounding
    included (`allowance.certified_gap_lower_bounds`), is > 0: the network, as
    it runs in its own precision, ranks y above j at every point of the ball,
    so no attack can make j win. A row with no open rival is certified
    (as `certificates.gaps_certified` says).
    """
    x = x.flatten(1)
    runs_in = model.affine_layers()[0].weight.dtype
    model64 = in_float64(model)
    eps_rows = ball.radii(x).double()
    lower = []
    widest = max(layer.out_features for layer in model.affine_layers())
    batch = max(1, min(IBP_BATCH, IBP_UNITS // widest))
    for start in range(0, len(x), batch):
        rows = slice(start, start + batch)
        bounds = allowance.certified_gap_lower_bounds(model64, x[rows].double(), ball.with_eps(eps_rows[rows]),
                                                      runs_in)
        lower.append(bounds.gather(1, labels[rows, None, None].expand(-1, 1, bounds.shape[2]))[:, 0])
    lower_gaps = torch.cat(lower) if lower else x.new_zeros(0, model.config.out_features, dtype=torch.float64)
    return (lower_gaps <= 0) & (torch.arange(lower_gaps.shape[1], device=x.device) != labels[:, None])


def apgd_start(
    start: str, run: torch.Tensor, shape: torch.Size, radius: torch.Tensor, norm: str, generator: torch.Generator
) -> torch.Tensor:
    """The offset from x at which each row's run begins (see `APGDStage.start`): `run` numbers each row's run
    (0 for the first), radius is (n, 1). In L1 every random start is a standard Gaussian offset, which the run
    projects onto its ball cut to the domain, as AutoAttack's L1 version starts: a sparse point on the sphere."""
    if start == "centre" and not run.any():
        return radius.new_zeros(shape)
    if norm == "l1":
        offset = torch.randn(shape, generator=generator, dtype=radius.dtype, device=radius.device)
    elif start == "vertex" and norm == "linf":
        heads = torch.rand(shape, generator=generator, dtype=radius.dtype, device=radius.device) < 0.5
        return torch.where(heads, -radius, radius)
    elif start == "vertex":
        direction = torch.randn(shape, generator=generator, dtype=radius.dtype, device=radius.device)
        return radius * direction / lipschitz.vector_norm(direction, norm)[:, None].clamp_min(1e-30)
    else:
        offset = lp_random_start(shape, radius, norm, generator)
    return torch.where((run == 0)[:, None], torch.zeros_like(offset), offset) if start == "centre" else offset


def apgd_run(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    xs: torch.Tensor,
    ys: torch.Tensor,
    targets: torch.Tensor | None,
    delta: torch.Tensor,
    radius: torch.Tensor,
    ball: Ball,
    loss_of: Loss,
    steps: int,
    initial_step: float = 2.0,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run on `loss_of` from xs + delta: per row, the highest `attack_loss` seen and its x'.

    Each step moves by the step size along `lp_ascent_direction` (L-inf or
    L2), projects into the ball and the domain, then mixes in the previous
    move with weight 1 - APGD_MOMENTUM and projects again. The step starts at
    `initial_step` times the radius; at each checkpoint (`apgd_intervals`) a row
    halves it and goes back to the best point of `loss_of` it has seen when at
    most APGD_RHO of the interval's steps raised the loss, or when the interval
    found no better point and the step was not halved at the checkpoint before.
    In L1 the step is sparse (`l1_sparse_direction`) and follows L1-APGD's
    own schedule instead (see L1_CHECKPOINT), from the smaller of
    `initial_step` and L1_LARGEST_STEP times the radius.
    Rows leave the run once broken; rows of one group (`groups`: copies of one
    example from different starts; by default each row alone) leave together.
    """
    best = torch.full((len(xs),), float("-inf"), dtype=xs.dtype, device=xs.device)
    found = xs.clone()
    groups = torch.arange(len(xs), device=xs.device) if groups is None else groups
    settled = torch.zeros(int(groups.max()) + 1 if len(groups) else 0, dtype=torch.bool, device=xs.device)
    rows = torch.arange(len(xs), device=xs.device)  # the rows still attacked, into xs

    def evaluate(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            point = point.detach().requires_grad_(True)
            logits = logits_of(point)
            loss = loss_of(logits, ys[rows], None if targets is None else targets[rows])
            (grad,) = torch.autograd.grad(loss.sum(), point)
        margin = attack_loss(logits.detach(), ys[rows])
        better = margin > best[rows]
        found[rows[better]], best[rows[better]] = point.detach()[better], margin[better]
        settled[groups[rows[margin >= 0]]] = True
        return loss.detach(), grad

    def projector(centre: torch.Tensor, size: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Points onto the ball around `centre` cut to the domain: in L-inf one clamp to the box, in L1 the exact
        projection onto the ball cut to the domain."""
        if ball.norm == "l1":
            low, high = ((torch.full_like(centre, -math.inf), torch.full_like(centre, math.inf))
                         if ball.domain is None else (ball.domain[0] - centre, ball.domain[1] - centre))
            return lambda z: centre + project_l1_box(z - centre, size, low, high)
        if ball.norm == "l2":
            return lambda z: centre + into_ball(z - centre, centre, size, ball)
        low, high = centre - size, centre + size
        if ball.domain is not None:
            low, high = low.clamp(min=ball.domain[0]), high.clamp(max=ball.domain[1])
        return lambda z: torch.clamp(z, low, high)

    project = projector(xs, radius)
    x_now = project(xs + delta)
    loss, grad = evaluate(x_now)
    l1 = ball.norm == "l1"
    largest = min(initial_step, L1_LARGEST_STEP) * radius if l1 else initial_step * radius
    moved = (x_now != xs).sum(dim=1, keepdim=True)  # L1: from a start off x, the start's coordinates over 1.5
    sparsity = torch.where(moved > 0, moved / L1_SPARSITY_SHRINK, L1_INITIAL_SPARSITY * xs.shape[1])
    s = {"x_now": x_now, "x_before": x_now, "x_best": x_now.clone(), "grad": grad, "grad_best": grad.clone(),
         "step": largest.clone(), "largest": largest, "loss_before": loss, "loss_best": loss.clone(),
         "raised": torch.zeros_like(loss), "best_at_checkpoint": loss.clone(),
         "halved_at_checkpoint": torch.ones_like(loss, dtype=torch.bool),
         "sparsity": sparsity.long().clamp(min=1), "nonzero": torch.where(moved > 0, moved, xs.shape[1])}
    intervals = iter([max(int(L1_CHECKPOINT * steps), 1)] * steps if l1 else apgd_intervals(steps))
    interval, count = next(intervals, steps + 1), 0
    everywhere = torch.ones(1, dtype=torch.bool, device=xs.device)  # L-inf and L2 directions ignore `movable`
    for iteration in range(steps):
        with torch.no_grad():
            if ball.norm == "l1":
                movable = movable_coordinates(s["grad"], s["x_now"], ball.domain)
                direction = l1_sparse_direction(s["grad"], movable, s["sparsity"])
            else:
                direction = lp_ascent_direction(s["grad"], ball.norm, everywhere)
            plain = project(torch.addcmul(s["x_now"], s["step"], direction))
            weight = 1.0 if iteration == 0 or l1 else APGD_MOMENTUM
            # x + w (plain - x) + (1 - w) (x - x_before), as two interpolations
            mixed = torch.lerp(torch.lerp(s["x_before"], s["x_now"], 2.0), plain, weight)
            s["x_before"], s["x_now"] = s["x_now"], project(mixed)
        loss, s["grad"] = evaluate(s["x_now"])
        with torch.no_grad():
            s["raised"] += loss > s["loss_before"]
            s["loss_before"] = loss
            better = loss > s["loss_best"]
            s["x_best"][better], s["loss_best"][better], s["grad_best"][better] = s["x_now"][better], loss[better], \
                s["grad"][better]
            count += 1
            if count == interval and l1:
                nonzero = (s["x_best"] != xs[rows]).sum(dim=1, keepdim=True)
                back = nonzero < 0.95 * s["nonzero"]
                s["sparsity"], s["nonzero"] = (nonzero / L1_SPARSITY_SHRINK).long().clamp(min=1), nonzero
                s["step"] = torch.where(back, s["largest"], s["step"] / L1_SPARSITY_SHRINK)
                s["step"] = torch.maximum(s["step"], s["largest"] / 10)
                s["x_now"] = torch.where(back, s["x_best"], s["x_now"])
                s["grad"] = torch.where(back, s["grad_best"], s["grad"])
                interval, count = next(intervals, steps + 1), 0
            elif count == interval:
                halve = (s["raised"] <= APGD_RHO * interval) | (~s["halved_at_checkpoint"]
                                                                & (s["best_at_checkpoint"] >= s["loss_best"]))
                s["step"] = torch.where(halve[:, None], s["step"] / 2, s["step"])
                s["x_now"] = torch.where(halve[:, None], s["x_best"], s["x_now"])
                s["grad"] = torch.where(halve[:, None], s["grad_best"], s["grad"])
                s["loss_before"] = torch.where(halve, s["loss_best"], s["loss_before"])
                s["best_at_checkpoint"], s["halved_at_checkpoint"] = s["loss_best"].clone(), halve
                s["raised"] = torch.zeros_like(s["raised"])
                interval, count = next(intervals, steps + 1), 0
            done = settled[groups[rows]]
            if done.any() and (count == 0 or done.float().mean() >= APGD_COMPACT_FRACTION):
                keep = ~done
                rows = rows[keep]
                if not len(rows):
                    break
                s = {name: value[keep] for name, value in s.items()}
                project = projector(xs[rows], radius[rows])
    return best, found


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    ball: Ball,
    stages: tuple[APGDStage, ...] | None = None,
    seed: int = 0,
    batch_size: int = EVAL_BATCH,
    use_ibp: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD (Croce & Hein 2020) inside the ball (cut to its domain) around each row of x: `stages` in order.

    Returns (broken, found) as `pgd` does: found[i] is the x' of highest
    `attack_loss` seen over all runs (x itself when no run attacked row i), and
    broken[i] says that another class ties or beats labels[i] there, as the
    model computes found in batches of `batch_size` (evaluated once more at
    the end, so that a tie seen in another batch is not reported). Each stage
    attacks the rows not broken yet, its runs side by side as copies of each
    row (`batch_size` copies at a time), all copies of a row stopping when one
    breaks it; a targeted stage attacks each row's rivals in the order of its
    logits at x.

    With `use_ibp` and a `LipschitzMLP`, IBP first settles what no attack can
    change: rows it certifies get no step, and rivals it rules out
    (`ibp_open_rivals`) are no target. That saves most of the time and breaks
    nothing less, since those rows cannot be broken and those classes cannot
    win. Random starts come from `seed`: the same inputs, seed and batch size
    give the same result. Model parameters get no gradient.

    In L1 each run first searches balls 3 and 2 times wider, each from the best
    point of the one before, and then the ball itself (`L1_WIDER_BALLS`); only
    that last search's points are reported (docs/results.md compares it with
    AutoAttack's L1 version). With `progress`, a bar on stderr counts the stages.
    """
    x = x.flatten(1)
    if not len(x):
        return torch.zeros(0, dtype=torch.bool, device=x.device), x.clone()
    if stages is None:
        stages = APGD_L1 if ball.norm == "l1" else APGD_DEFAULT
    eps_rows = ball.radii(x)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def logits_of(v: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (v,))

    def in_batches(v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([logits_of(v[start:start + batch_size]) for start in range(0, len(v), batch_size)])

    generator = torch.Generator(device=x.device).manual_seed(seed)
    best = torch.full((len(x),), float("-inf"), dtype=x.dtype, device=x.device)
    found = x.clone()
    logits = in_batches(x)
    if use_ibp and isinstance(model, LipschitzMLP):
        rivals = ibp_open_rivals(model, x, labels, ball)
    else:
        rivals = torch.arange(logits.shape[1], device=x.device) != labels[:, None]
    ranked = logits.masked_fill(~rivals, float("-inf")).argsort(dim=1, descending=True, stable=True)
    margin_at_x = attack_loss(logits, labels)
    bar = tqdm(stages, desc="apgd", unit="stage", disable=not progress, leave=False)
    for stage in bar:
        bar.set_postfix(broken=int((best >= 0).sum()), refresh=False)
        per_chunk = max(1, batch_size // stage.runs)
        for rank in range(stage.targets) if stage.targets else [None]:
            eligible = (best < 0) & (rivals.sum(dim=1) > (0 if rank is None else rank))
            if stage.focus is not None:
                eligible &= best >= stage.focus * margin_at_x
            for chunk in eligible.nonzero()[:, 0].split(per_chunk):
                if not len(chunk):  # split gives one empty chunk when nothing is eligible
                    continue
                index = chunk.repeat_interleave(stage.runs)
                radius = eps_rows[index][:, None]
                run = torch.arange(stage.runs, device=x.device).repeat(len(index) // stage.runs)
                delta = apgd_start(stage.start, run, x[index].shape, radius, ball.norm, generator)
                target = None if rank is None else ranked[index, rank]
                groups = torch.arange(len(index), device=x.device) // stage.runs
                for widen, share in (L1_WIDER_BALLS if ball.norm == "l1" else ((1.0, 1.0),)):
                    margin, z = apgd_run(logits_of, x[index], labels[index], target, delta, widen * radius, ball,
                                         LOSSES[stage.loss], max(1, round(share * stage.steps)), stage.initial_step,
                                         groups=groups)
                    delta = z - x[index]  # the next, smaller ball starts from this one's best point
                winner = margin.view(-1, stage.runs).argmax(dim=1) + torch.arange(0, len(index), stage.runs,
                                                                                  device=x.device)
                rows, margin, z = index[winner], margin[winner], z[winner]
                better = margin > best[rows]
                found[rows[better]], best[rows[better]] = z[better], margin[better]
    return attack_loss(in_batches(found), labels) >= 0, found


ATTACKS = ("apgd", "pgd")  # the first is the default


def attack(name: str, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ball: Ball, steps: int = 50,
           restarts: int = 5, seed: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(broken, found) of the attack called `name`: `apgd` with its default stages, or `pgd` with `steps` and
    `restarts`; with `progress`, a bar on stderr."""
    if name == "apgd":
        return apgd(model, x, labels, ball, seed=seed, progress=progress)
    if name == "pgd":
        return pgd(model, x, labels, ball, steps, restarts, seed=seed, progress=progress)
    raise ValueError(f"unknown attack {name!r}: choose one of {', '.join(ATTACKS)}")


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
        predicted = int(model(point[None].to(split.images)).argmax(dim=1))  # the split's device and dtype
        label = int(split.labels[index])
        if predicted != label:
            kept[index] = Counterexample(index, label, original, point, predicted, found_by)
    return kept
