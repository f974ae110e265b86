"""Measurements on a split: which examples each method certifies, their certified radii, clean and certified
accuracy, and the attack beside them.

Each function builds what the rules of `certificates` need and hands it to
them: the proved thresholds (`models.LipschitzMLP.certified_logit_bounds`), the
float64 logits of the network's float64 copy, and the rounding allowance
(`allowance`). The float64 products run on blocks of `BLOCK` examples aligned
with the split, so an example's certificate does not depend on the batch size
or on `--limit`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

import allowance
import attacks
import certificates
import rounding
from attacks import Counterexample
from certificates import LIPSCHITZ_METHODS, Accuracy, percent
from lipschitz import Ball
from mnist_data import Split
from models import LipschitzMLP, in_float64
from operators import require

BLOCK = 240  # examples per float64 block: one shape for every product (see `padded_blocks`)


def method_thresholds(model64: LipschitzMLP, norm: str, methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The proved float64 thresholds of each Lipschitz method among `methods`, from one computation of the
    model's bounds (`models.LipschitzMLP.certified_logit_bounds`)."""
    lipschitz_methods = [m for m in methods if m in LIPSCHITZ_METHODS]
    if not lipschitz_methods:
        return {}
    bounds = model64.certified_logit_bounds(norm)
    return {m: certificates.thresholds(bounds, m) for m in lipschitz_methods}


def require_rules(model: LipschitzMLP, methods: tuple[str, ...]) -> None:
    """Refuse, before any work, a network an operator of which lacks a rule that `methods` need: IBP's walk
    with rounding errors for every method (the allowance), and the slope rule for the Lipschitz methods."""
    lipschitz_rules = ("slope",) if any(m in LIPSCHITZ_METHODS for m in methods) else ()
    require(model.operators()[:-1], "certification", "propagate", "rounding", *lipschitz_rules)


@contextmanager
def evaluating(model: LipschitzMLP, norm: str, methods: tuple[str, ...]
               ) -> Iterator[tuple[torch.dtype, LipschitzMLP, dict[str, torch.Tensor]]]:
    """The model in eval mode and the arithmetic the bounds assume (`rounding.exact_arithmetic`) for the
    duration, after the checks every certificate needs; yields the network's arithmetic, its float64 copy and
    the proved thresholds of the Lipschitz methods among `methods`."""
    certificates.check_methods(methods)
    require_rules(model, methods)
    was_training = model.training
    model.eval()
    try:
        with rounding.exact_arithmetic():
            model64 = in_float64(model)
            yield model.affine_layers()[0].weight.dtype, model64, method_thresholds(model64, norm, methods)
    finally:
        model.train(was_training)


def padded_blocks(split: Split) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """(images, labels, rows): the split in blocks of `BLOCK` examples, the last padded with copies of its
    first example to the full size; `rows` is where the real ones sit in the split.

    How a BLAS rounds a product depends on its shape, through the kernel it
    picks (a batch of 1 or 7 rounds differently from a batch of 10,000), and
    on the row's place only within a ragged last tile of rows. Every product
    here has BLOCK rows, a multiple of every usual tile height (2 to 16), so an
    example's float64 results, and its certificate, do not depend on the
    batch, on --limit or on its place (the tests check this on the BLAS in use).
    """
    for start in range(0, len(split), BLOCK):
        images, labels = split.images[start : start + BLOCK], split.labels[start : start + BLOCK]
        rows = slice(start, start + len(labels))
        yield _pad(images), _pad(labels), rows


def _pad(rows: torch.Tensor) -> torch.Tensor:
    """`rows` completed to `BLOCK` rows with copies of the first."""
    missing = BLOCK - len(rows)
    return torch.cat([rows, rows[:1].expand(missing, *rows.shape[1:])]) if missing else rows


def _ball_for(ball: Ball, rows: slice) -> Ball:
    """The ball of one block: one radius per example is cut to the block's rows and padded like them."""
    if isinstance(ball.eps, torch.Tensor) and ball.eps.ndim:
        return ball.with_eps(_pad(ball.eps[rows]))
    return ball


def ibp_certified(model64: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball,
                  runs_in: torch.dtype = torch.float32) -> torch.Tensor:
    """Per example: IBP certifies the network running in `runs_in` (`model64` its float64 copy) over the ball,
    cut to its domain: every certified gap bound is > 0 (`certificates.gaps_certified`)."""
    return certificates.gaps_certified(allowance.certified_gap_lower_bounds(model64, x, ball, runs_in), labels)


def ibp_radius(model64: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball,
               runs_in: torch.dtype = torch.float32) -> torch.Tensor:
    """The largest radius up to `ball.eps` at which `ibp_certified` holds, per example, by bisection."""
    return certificates.bisect_radius(lambda r: ibp_certified(model64, x, labels, ball.with_eps(r), runs_in),
                                      ball.radii(x))


@torch.no_grad()
def certify_split(model: LipschitzMLP, split: Split, ball: Ball, methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Per-example masks: "clean" (the float32 logits are finite and their argmax is the label), one per method
    (certified in `ball`), and "overflow" (the float32 network may overflow in the ball: nothing certified).

    The Lipschitz methods certify the whole ball; ibp the ball cut to its
    domain. See `certificates` for what a certificate means and why it holds
    in floating point. Certified implies clean at x itself: a certified example
    that is not clean-correct is a soundness bug, and raises.
    """
    masks: dict[str, list[torch.Tensor]] = {"clean": [], "overflow": [], **{m: [] for m in methods}}
    with evaluating(model, ball.norm, methods) as (runs_in, model64, thresholds):
        for x, y, rows in padded_blocks(split):
            count = rows.stop - rows.start
            masks["clean"].append(clean_correct(model(x), y)[:count])
            x, block = x.double(), _ball_for(ball, rows)
            voided = torch.zeros(len(x), dtype=torch.bool, device=x.device)
            if thresholds:  # the Lipschitz methods' ball is whole, not cut to the domain
                logits = model64(x)
                gap_allowance = allowance.gap_allowance(model64, x, Ball(block.norm, block.eps), runs_in)
                voided |= allowance.voided(gap_allowance)
            for method in methods:
                if method == "ibp":
                    gaps = allowance.certified_gap_bounds(model64, x, block, runs_in)
                    mask = certificates.gaps_certified(gaps.certified_lower(), y)
                    voided |= allowance.voided(gaps.allowance)
                else:
                    mask = certificates.certified(logits, y, thresholds[method], block.radii(x), gap_allowance)
                masks[method].append(mask[:count])
            masks["overflow"].append(voided[:count])
    result = {name: torch.cat(parts) for name, parts in masks.items()}
    check_within_clean(result, result["clean"], methods)
    return result


def clean_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example: the float32 logits are all finite and their argmax is the label. Non-finite logits (an
    overflow at x itself) count as wrong, whatever their argmax."""
    return (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)


def check_within_clean(certified: dict[str, torch.Tensor], clean: torch.Tensor, methods: tuple[str, ...]) -> None:
    """Raise when a method certifies an example that the float32 network does not classify correctly at x
    itself: x lies in its own ball, so that would contradict the certificate."""
    for method in methods:
        wrong = (certified[method] & ~clean).nonzero().flatten().tolist()
        if wrong:
            raise RuntimeError(f"unsound: {method} certifies examples {wrong[:10]} that are not clean-correct")


@torch.no_grad()
def certified_radii(
    model: LipschitzMLP, split: Split, methods: tuple[str, ...], norm: str, domain: tuple[float, float] | None
) -> dict[str, torch.Tensor]:
    """Per example: "prediction", "top2_margin" (of the float32 logits) and each method's certified radius
    (0 where the example is not clean-correct, which is checked).

    Radii are capped at the pixel box's diameter (where every valid image is
    covered), rounded down to `RADIUS_DIGITS` significant digits and checked
    there (`certificates.verified_radius`). A Lipschitz radius is found in
    closed form twice: once with the allowance at the point x, which can only
    overestimate it, then with the allowance over the ball of that radius,
    which bounds that of any smaller ball. IBP's radius is found by bisection.
    """
    diameter = certificates.domain_diameter(model.config.in_features, norm)
    widest = Ball(norm, diameter, domain)
    columns: dict[str, list[torch.Tensor]] = {"prediction": [], "top2_margin": [], "clean": [],
                                              **{m: [] for m in methods}}
    with evaluating(model, norm, methods) as (runs_in, model64, thresholds):
        for x, y, rows in padded_blocks(split):
            count = rows.stop - rows.start
            logits32 = model(x)
            columns["prediction"].append(logits32.argmax(dim=1)[:count])
            columns["top2_margin"].append(certificates.top2_margin(logits32)[:count])
            x = x.double()
            logits = model64(x)

            def lost(radius: torch.Tensor) -> torch.Tensor:
                return allowance.gap_allowance(model64, x, Ball(norm, radius), runs_in)

            if thresholds:
                at_point = lost(torch.zeros(len(x), dtype=x.dtype, device=x.device))
                largest = torch.stack([certificates.certified_radius(logits, y, t, at_point)
                                       for t in thresholds.values()]).amax(dim=0)
                over_ball = lost(largest.clamp(max=diameter))
            for method in methods:
                if method == "ibp":
                    radius = ibp_radius(model64, x, y, widest, runs_in)
                    radius = certificates.verified_radius(
                        radius, lambda r: ibp_certified(model64, x, y, widest.with_eps(r), runs_in))
                else:
                    threshold = thresholds[method]
                    radius = certificates.certified_radius(logits, y, threshold, over_ball).clamp(max=diameter)
                    radius = certificates.verified_radius(
                        radius, lambda r, t=threshold: certificates.certified(logits, y, t, r, lost(r)))
                columns[method].append(radius[:count])
            columns["clean"].append(clean_correct(logits32, y)[:count])
    result = {name: torch.cat(parts) for name, parts in columns.items()}
    check_within_clean({m: result[m] > 0 for m in methods}, result.pop("clean"), methods)
    return result


def evaluate(model: LipschitzMLP, split: Split, ball: Ball, method: str = "global") -> Accuracy:
    """Clean and certified accuracy of `model` on `split`, certified in `ball` by the rule `method`."""
    masks = certify_split(model, split, ball, (method,))
    return Accuracy(percent(masks["clean"]), percent(masks[method]))


@dataclass(frozen=True)
class Row:
    """One radius: clean accuracy, certified accuracy per method, and the attack (all in percent)."""

    eps: float
    clean: float
    certified: dict[str, float]
    robust: float | None = None  # the attack's empirical robust accuracy
    broken: dict[str, int] | None = None  # certified examples that the attack broke: must be 0
    counterexamples: list[Counterexample] | None = None  # the attack's, re-checked in float32
    overflow: int = 0  # examples not certified because the float32 network may overflow in their ball
    attack: str = "none"  # the attack's name


def measure(model: LipschitzMLP, split: Split, ball: Ball, methods: tuple[str, ...], attack: str = "none",
            steps: int = 50, restarts: int = 5, seed: int = 0, keep: int | None = 8, progress: bool = False) -> Row:
    """Certify every method in `ball` and, with attack "apgd" or "pgd" (`attacks.ATTACKS`), attack every example
    (certified ones too, with a progress bar on stderr if asked), keeping the first `keep` counterexamples (None:
    every one).

    IBP and the attack both work in the ball cut to its domain; the Lipschitz
    certificates hold in the whole ball, which contains it.
    """
    masks = certify_split(model, split, ball, methods)
    certified = {m: percent(masks[m]) for m in methods}
    overflow = int(masks["overflow"].sum())
    if attack == "none":
        return Row(ball.eps, percent(masks["clean"]), certified, overflow=overflow)
    model.eval()
    broken, found = attacks.attack(attack, model, split.images, split.labels, ball, steps, restarts, seed, progress)
    broken_certified = {m: int((masks[m] & broken).sum()) for m in methods}
    kept = attacks.counterexamples(model, split, ball, broken, found, attack, limit=keep)
    return Row(ball.eps, percent(masks["clean"]), certified, percent(~broken), broken_certified, list(kept.values()),
               overflow, attack)
