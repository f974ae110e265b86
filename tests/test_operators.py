"""Each operator's rules as theorems (the normalisation's and a Linear layer's rounding, the activations' error
rules), the Linear view helpers, and the design itself: a toy operator defined in one place is used by every
analysis through its own rules, and an operator that lacks a rule is refused rather than encoded as another."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import allowance
import ibp
import lipschitz
import measure
import milp
from groupsort import GroupSort, ReLU
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, Split
from models import LipschitzMLP, MLPConfig
from nets import random_directions, seeds
from operators import Activation, Box, Linear, MissingRule, Normalise, Slope, Step, require
from program import Program, Wire, Wires

F32, F64 = torch.float32, torch.float64


def test_the_normalisation_scales_every_bound_by_one_over_std():
    unit, whole = torch.ones(5, dtype=F64), torch.tensor(1.0, dtype=F64)
    slope = Normalise(0.1307, 0.25).slope(Slope(unit, whole), "l2", lipschitz.operator_norm)
    assert torch.equal(slope.unit, torch.full((5,), 4.0, dtype=F64)) and slope.whole.item() == 4.0


@given(st.floats(-1, 1), st.floats(0.05, 3), seeds)
@settings(max_examples=60, deadline=None)
@example(0.1307, 0.3081, 0)  # MNIST's own: both round in float32
def test_the_normalisations_rounding_bounds_float32s(mean, std, seed):
    """At float32 pixels of the box, (x - mean) / std computed in float32 is within errors[0] of the exact value
    (float64 is exact here but for 1e-16 relative), and the exact value within errors[1] of the computed ends."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 6, generator=g)
    normalise = Normalise(mean, std)
    lower, upper = x.double() - 0.01, x.double() + 0.01
    slack = 2 ** -53 * (lower.abs() + upper.abs())
    errors = torch.stack([torch.zeros_like(slack), slack])
    box = normalise.propagate(Box(lower, upper, errors, overflow=torch.zeros(64, dtype=torch.bool)), Step(F32))
    assert not box.overflow.any()
    computed = normalise(x).double()
    exact = (x.double() - mean) / std
    assert ((computed - exact).abs() <= box.errors[0] * (1 - 1e-12)).all()
    assert (exact >= box.lower - box.errors[1]).all() and (exact <= box.upper + box.errors[1]).all()


@given(st.integers(1, 40), st.integers(1, 5), st.sampled_from([1e-3, 0.1, 10.0]), seeds)
@settings(max_examples=60, deadline=None)
def test_a_affine_layers_rounding_carries_its_input_error_and_adds_its_own(fan_in, fan_out, size, seed):
    """Inputs h^ = h + e with |e| <= error, |h|, |h^| <= magnitude: fl32(W h^ + b) is within the rule's bound of
    the exact W h + b. The carried part |W| error dominates here, so a rule that dropped it would fail."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(fan_out, fan_in, generator=g).double()
    bias = torch.randn(fan_out, generator=g).double()
    h = torch.randn(32, fan_in, generator=g).double()
    error = torch.full((32, fan_in), size, dtype=F64)
    noisy = (h + error * torch.randn(32, fan_in, generator=g).sign()).float().double()  # float32 inputs
    error = (noisy - h).abs()
    magnitude = torch.maximum(h.abs(), noisy.abs())
    bound, _ = Linear.of(weight, bias).rounding(error, magnitude, F32)
    computed = torch.nn.functional.linear(noisy.float(), weight.float(), bias.float()).double()
    exact = h @ weight.T + bias
    assert ((computed - exact).abs() <= bound).all()


@given(st.integers(0, 9), st.integers(0, 9), seeds)
@settings(max_examples=40, deadline=None)
def test_a_gaps_carried_error_is_bounded_by_the_rows_difference_and_attained_along_it(i, j, seed):
    """Two logits of an orthonormal layer computed from one h^ = h + d, d = c (w_i - w_j): the gap moves by
    c ||w_i - w_j||^2 = ||w_i - w_j||_2 ||d||_2, which `gap_rounding` bounds through the rows' difference and
    nearly attains, while the two logits' own bounds add to 2 ||d||_2 (each row has norm 1): sqrt(2) times
    as much. Every other gap stays within its bound too."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.empty(10, 64)
    torch.nn.init.orthogonal_(weight, generator=g)
    bias = torch.randn(10, generator=g).float()
    h = torch.rand(1, 64, generator=g).float()
    shifted = (h.double() + 1e-2 * (weight[i] - weight[j]).double()).float()
    d = shifted.double() - h.double()
    magnitude = torch.maximum(h.abs(), shifted.abs()).double()
    per_unit = torch.full((1, 64), 1e-2, dtype=F64)  # loose entry by entry: the norm must do the work
    box = Box(h.double(), h.double(), torch.stack([per_unit, torch.zeros_like(per_unit)]), magnitude,
              torch.linalg.vector_norm(d, dim=1))
    layer = Linear.of(weight.double(), bias.double())
    bound = layer.gap_rounding(box, F32)[0]
    moved = (torch.nn.functional.linear(shifted, weight, bias).double() - (h.double() @ weight.double().T
                                                                           + bias.double()))[0]
    gaps_moved = moved[:, None] - moved[None, :]
    assert (gaps_moved.abs() <= bound).all()
    if i != j:
        assert gaps_moved[i, j].abs() >= 0.99 * bound[i, j]
        units = layer.box_rounding(box, F32)[0][0]
        assert bound[i, j] * 1.4 < units[i] + units[j]


@given(st.sampled_from([1, 2, 3, 5]), st.integers(1, 4), seeds)
@settings(max_examples=60, deadline=None)
def test_activations_pass_error_bounds_by_their_rounding_rules(group_size, groups, seed):
    """A sort and a max with 0 round nothing: for a, a' with |a - a'| <= e per unit (and ||a - a'||_2 <= n),
    |act(a) - act(a')| <= the rule's bound per unit, and ||act(a) - act(a')||_2 <= its norm."""
    g = torch.Generator().manual_seed(seed)
    width = group_size * groups
    a = torch.randn(64, width, generator=g, dtype=F64)
    e = torch.rand(64, width, generator=g, dtype=F64)
    moved = a + e * (2 * torch.rand(64, width, generator=g, dtype=F64) - 1)
    norm = torch.linalg.vector_norm(a - moved, dim=1)
    for activation in (GroupSort(group_size), ReLU()):
        errors, error_norm = activation.rounding(torch.stack([e, e]), norm)
        change = (activation(a) - activation(moved)).abs()
        assert (change <= errors[0]).all() and (change <= errors[1]).all()
        assert (torch.linalg.vector_norm(change, dim=1) <= error_norm * (1 + 1e-12)).all()


@given(seeds, st.floats(1e-9, 1e3))
@settings(max_examples=60, deadline=None)
@example(seed=24383174, scale=1e-5)  # the test's own rounding, once past a relative 1e-12 of the bound
def test_relu_drops_the_errors_of_units_off_in_both_arithmetics(seed, scale):
    """Exact values a <= U (the box's exact upper end), float32 values within e0 of them, and the computed end
    `upper` within e1 of U, each often at its extreme: |relu(a) - relu(a^)| <= the rule's bound [0] and
    |relu(U) - relu(upper)| <= [1]; and the rule zeroes the bounds of every unit whose upper end plus both
    errors is below 0, no other."""
    g = torch.Generator().manual_seed(seed)
    shape = (64, 16)

    def signs() -> torch.Tensor:  # -1, +1 or a uniform draw in between, a third of the time each
        pick = torch.randint(0, 3, shape, generator=g)
        uniform = 2 * torch.rand(shape, generator=g, dtype=F64) - 1
        return torch.where(pick == 0, -1.0, torch.where(pick == 1, 1.0, uniform)).to(F64)

    errors = scale * torch.rand((2, *shape), generator=g, dtype=F64)
    exact_end = scale * 3 * (torch.rand(shape, generator=g, dtype=F64) - 0.7)
    upper = exact_end + errors[1] * signs()
    exact = exact_end - errors[0] * torch.rand(shape, generator=g, dtype=F64) * (torch.rand(shape, generator=g) < 0.5)
    computed = exact + errors[0] * signs()
    bound, _ = ReLU().rounding(errors, None, upper)
    def own(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # the test's own sums round, by an ulp or so
        return 1e-12 * (a.abs() + b.abs())

    assert ((torch.relu(exact) - torch.relu(computed)).abs() <= bound[0] + own(exact, computed)).all()
    assert ((torch.relu(exact_end) - torch.relu(upper)).abs() <= bound[1] + own(exact_end, upper)).all()
    off = upper + errors.sum(dim=0) < 0
    assert off.any() and (~off).any()
    assert torch.equal(bound == 0, off.expand_as(bound) | (errors == 0))


def test_a_linear_view_shares_its_tensors_and_folds_the_gaps():
    weight = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]], requires_grad=True)
    bias = torch.tensor([0.1, -0.2, 0.3])
    view = Linear.of(weight, bias)
    pairs = view.pairs()
    assert pairs.weight.shape == (9, 2) and torch.equal(pairs.weight[1], weight[0] - weight[1])
    assert torch.equal(pairs.bias.view(3, 3), bias[:, None] - bias[None, :])
    pairs.weight.sum().backward()  # the rows are differences of the layer's own tensor: gradients reach it
    assert weight.grad is not None and list(view.parameters()) == []


def test_batch_norm_folds_into_a_linear_layer_as_one_affine_map():
    torch.manual_seed(0)
    layer = Linear(4, 3).double()
    scale, mean, shift = torch.rand(3, dtype=F64) + 0.5, torch.randn(3, dtype=F64), torch.randn(3, dtype=F64)
    weight, bias = layer.folded(scale, mean, shift)
    h = torch.randn(5, 4, dtype=F64)
    assert torch.allclose(h @ weight.T + bias, scale * (layer(h) - mean) + shift, rtol=1e-14, atol=1e-14)


class Abs(Activation):
    """A toy operator, all of its rules in this one class: |h| per unit, which is not monotone. Each rule
    records its use in `used`, shared by the float64 copies that the analyses make."""

    used: set[str] = set()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.abs()

    def slope(self, slope: Slope, norm: str, operator_norm: lipschitz.OperatorNorm) -> Slope:
        self.used.add("slope")
        return slope  # ||a| - |a'|| <= |a - a'| per unit

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.used.add("interval")
        straddles = (lower < 0) & (upper > 0)
        low = torch.where(straddles, torch.zeros_like(lower), torch.minimum(lower.abs(), upper.abs()))
        return low, torch.maximum(lower.abs(), upper.abs())

    def rounding(self, errors: torch.Tensor, error_norm: torch.Tensor | None, upper: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.used.add("rounding")
        return errors, error_norm  # exact, and 1-Lipschitz per unit

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        """t = |h|: t >= h, t >= -h, t <= h + 2|L| (1 - d), t <= -h + 2U d."""
        self.used.add("encode")
        out = []
        for wire in wires.plain(self):
            top = max(abs(wire.lower), abs(wire.upper))
            t = program.variable(0.0, top)
            if wire.column is not None:
                d = program.variable(0.0, 1.0, integer=True)
                program.add([(t, 1.0)], [(wire, -1.0)], 0.0, math.inf)
                program.add([(t, 1.0)], [(wire, 1.0)], 0.0, math.inf)
                program.add([(t, 1.0), (d, 2 * abs(wire.lower))], [(wire, -1.0)], -math.inf, 2 * abs(wire.lower))
                program.add([(t, 1.0), (d, -2 * abs(wire.upper))], [(wire, 1.0)], -math.inf, 0.0)
            else:
                program.row([t], [1.0], 0.0, 0.0)
            out.append(Wire(t, 0.0, top))
        return Wires(out)


def abs_net(seed: int, in_features: int = 2) -> tuple[LipschitzMLP, Abs]:
    """A float32 net in_features-6-3 with Abs as its activation, not L1-normalised."""
    torch.manual_seed(seed)
    model = LipschitzMLP(MLPConfig(in_features=in_features, hidden=(6,), out_features=3, activation="relu"))
    toy = Abs()
    toy.used.clear()
    model.layers[1] = toy
    with torch.no_grad():
        for layer in model.affine_layers():
            layer.weight.mul_(torch.empty_like(layer.weight).uniform_(0.5, 3.0))
            layer.bias.normal_()
    return model.eval(), toy


@given(seeds, st.floats(0.02, 0.3))
@settings(max_examples=15, deadline=None)
def test_a_toy_operator_is_used_through_its_own_rules_by_every_analysis(seed, eps):
    """Bounds, IBP, both allowances and the exact program of a net with |h| as its activation: each analysis
    calls the toy's rules, and each result is sound for |h| (ReLU's rules in its place would be unsound: relu
    of a negative unit is 0, its absolute value is not)."""
    model, toy = abs_net(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 2, generator=g)
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    ball = Ball("linf", eps, PIXEL_RANGE)
    # Lipschitz bounds: observed changes stay within them
    bounds = model.logit_bounds("l2")
    moved = (x.double() + 0.05 * random_directions(40, 2, "l2", g)).float()
    with torch.no_grad():
        change = (model(moved) - model(x)).abs()
    assert (change <= bounds.per_logit * 0.05 * (1 + 1e-5)).all() and toy.used == {"slope"}
    # IBP: every sampled point of the box lies above the gaps' lower bounds
    lower = ibp.gap_lower_bounds(model.double(), x.double(), ball).float()
    model.float()
    points = (x[:, None] + eps * (2 * torch.rand(40, 64, 2, generator=g) - 1)).clamp(0, 1)
    with torch.no_grad():
        logits = model(points.flatten(0, 1)).view(40, 64, 3)
    assert (lower[:, None] <= logits[..., :, None] - logits[..., None, :] + 1e-5).all()
    assert "interval" in toy.used and "rounding" not in toy.used
    # both allowances, through the certificates: nothing certified breaks on a fine grid of the box
    masks = measure.certify_split(model, Split(x, labels), ball, ("margin", "ibp"))
    assert "rounding" in toy.used
    verdicts = milp.verify_split(model, Split(x[:8], labels[:8]), ball, "exact", progress=False)
    for i in range(8):
        axes = [torch.linspace(max(0.0, v - eps), min(1.0, v + eps), 61) for v in x[i].tolist()]
        with torch.no_grad():
            flips = (model(torch.cartesian_prod(*axes)).argmax(dim=1) != labels[i]).any()
        if flips:
            assert not masks["margin"][i] and not masks["ibp"][i] and verdicts[i].status == "counterexample"
        if masks["ibp"][i]:
            assert verdicts[i].status == "robust"
    model64, point = model.double(), x[:1].double()
    boxes = allowance.certified_gap_bounds(model64, point, ball, apart=True).boxes
    milp.encode(model64, point, ball, boxes)
    assert "encode" in toy.used


class AbsWithoutEncoding(Abs):
    encode = Activation.encode  # back to the base class's refusal


class AbsWithoutRounding(Abs):
    rounding = Activation.rounding


class AbsWithoutSlope(Abs):
    slope = Activation.slope


def with_toy(toy: Abs) -> LipschitzMLP:
    model, _ = abs_net(0)
    model.layers[1] = toy
    return model


def test_an_operator_missing_a_rule_is_refused_when_the_analysis_starts():
    """Never replaced by another operator's rule: each analysis names the rule and the layer before any work."""
    x, labels = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
    split, ball = Split(x, labels), Ball("linf", 0.1, PIXEL_RANGE)
    model = with_toy(AbsWithoutEncoding())
    with pytest.raises(MissingRule, match="exact verification needs the encode rule of every layer, and "
                                          "AbsWithoutEncoding has none"):
        milp.verify_split(model, split, ball, "exact", progress=False)
    assert model.layers[1].used == set()  # refused before any work
    for method in ("lp", "best"):
        with pytest.raises(MissingRule, match="encode rule"):
            milp.verify_split(model, split, ball, method, progress=False)
    model = with_toy(AbsWithoutRounding())
    for method in ("global", "ibp"):
        with pytest.raises(MissingRule, match="needs the rounding rule of every layer, and AbsWithoutRounding"):
            measure.certify_split(model, split, ball, (method,))
    with pytest.raises(MissingRule, match="rounding rule"):
        allowance.logit_allowance(model.double(), x.double(), ball)
    with pytest.raises(MissingRule, match="needs the slope rule of every layer, and AbsWithoutSlope has none"):
        with_toy(AbsWithoutSlope()).logit_bounds("linf")
    ibp.gap_lower_bounds(with_toy(AbsWithoutRounding()), x, ball)  # training's IBP needs no rounding rule


def test_require_names_the_missing_rule():
    require([Normalise(0.0, 1.0), Linear(2, 2), ReLU()], "test", "slope", "interval", "encode")
    with pytest.raises(MissingRule, match="test needs the encode rule of every layer, and Activation has none"):
        require([Activation()], "test", "encode")
