"""Convolutions, invertible downsampling and BCOP: every rule of a convolution is its dense matrix's, checked
as a theorem in float64 against that matrix and attacked in float32; BCOP's convolutions are orthogonal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import attacks
import bcop
import lipschitz
import measure
import milp
import rounding
from convolution import Convolution, Downsample
from errors import ConfigError
from lipschitz import Ball
from mnist_data import Split
from models import LipschitzMLP, MLPConfig
from nets import norms, seeds
from operators import Box, Linear, Slope, Step
from orthonormal import Bjorck


@st.composite
def convolutions(draw) -> Convolution:
    """A float64 convolution of random shape, kernel, stride, padding (zeros, or circular at stride 1) and
    channel counts, with random weights of any scale."""
    side = draw(st.integers(2, 7))
    kernel = draw(st.integers(1, min(4, side)))
    circular = draw(st.booleans()) and kernel % 2 == 1
    stride = 1 if circular else draw(st.integers(1, 3))
    padding = kernel // 2 if circular else draw(st.integers(0, 2))
    shape = (side, draw(st.integers(kernel, 7)), draw(st.integers(1, 4)))
    torch.manual_seed(draw(seeds))
    conv = Convolution(shape, draw(st.integers(1, 5)), kernel, stride, padding,
                       padding_mode="circular" if circular else "zeros").double()
    with torch.no_grad():
        conv.weight.mul_(10.0 ** draw(st.integers(-3, 3)))
        conv.bias.normal_()
    return conv


def dense(conv: Convolution) -> Linear:
    """The convolution as a Linear layer: its matrix built independently of `Convolution.matrix`, column by column
    from torch's own nn.functional.conv2d (circular padding by nn.functional.pad), and its per-unit bias."""
    height, width, channels = conv.shape
    basis = torch.eye(conv.in_features, dtype=torch.float64).view(-1, height, width, channels).permute(0, 3, 1, 2)
    pad = conv.padding[0]
    if conv.padding_mode == "circular":
        basis, pad = F.pad(basis, [pad] * 4, mode="circular"), 0
    columns = F.conv2d(basis, conv.weight.detach(), None, conv.stride, pad).permute(0, 2, 3, 1).flatten(1)
    return Linear.of(columns.T.contiguous(), conv.unit_bias.detach())


@given(convolutions(), seeds)
@settings(max_examples=80, deadline=None)
def test_a_convolution_is_its_dense_matrix(conv, seed):
    """forward, |W| v, matrix and every norm agree with the dense matrix (row norms for q = inf bound it)."""
    g = torch.Generator().manual_seed(seed)
    layer = dense(conv)
    x = torch.randn(5, conv.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(conv(x), layer(x), rtol=1e-12, atol=1e-12 * conv.weight.abs().max())
        assert torch.allclose(conv.abs_apply(x.abs()), layer.abs_apply(x.abs()), rtol=1e-12)
        assert torch.equal(conv.matrix(), layer.weight)
        for norm in ("linf", "l2"):
            assert torch.allclose(conv.row_norms(norm), layer.row_norms(norm), rtol=1e-12)
        assert (conv.row_norms("l1") >= layer.row_norms("l1")).all()
        assert torch.allclose(conv.column_norms(), layer.weight.abs().sum(dim=0), rtol=1e-12)
        for norm in ("linf", "l1"):
            assert torch.allclose(conv.operator_norm(norm, lipschitz.operator_norm_upper_bound),
                                  lipschitz.operator_norm(layer.weight, norm), rtol=1e-12)
        proved = conv.operator_norm("l2", lipschitz.operator_norm_upper_bound)
        assert proved >= torch.linalg.matrix_norm(layer.weight, 2) * (1 - 1e-12)


@given(convolutions())
@settings(max_examples=40, deadline=None)
def test_the_rounding_rules_count_every_term_of_a_unit_and_of_a_sum(conv):
    """Higham's bound for a unit needs at least as many roundings as its dot product has terms (the kernel's
    window, whatever the padding cuts), and the bounds' rounding factor as many as the longest sum of the slope
    rule: a row's terms and a column's (`models.LipschitzMLP._rounding_factor`)."""
    with torch.no_grad():
        pattern = dense(conv).weight != 0 if conv.weight.ne(0).all() else None
    assume(pattern is not None)
    assert conv.fan_in >= int(pattern.sum(dim=1).max())
    assert conv.longest_sum >= max(int(pattern.sum(dim=0).max()), int(pattern.sum(dim=1).max()))


@given(convolutions(), norms, seeds)
@settings(max_examples=80, deadline=None)
def test_a_convolutions_slope_and_interval_rules_are_its_dense_matrixs(conv, norm, seed):
    """The Lipschitz bounds equal the Linear rule on the dense matrix (or, with row norms bounded, never fall
    below them), and hold for sampled pairs; the interval equals the dense one, holds every corner sampled and
    the box's centre."""
    g = torch.Generator().manual_seed(seed)
    layer = dense(conv)
    slope = Slope(torch.rand(conv.in_features, generator=g, dtype=torch.float64) + 0.1,
                  torch.rand((), generator=g, dtype=torch.float64) * conv.in_features + 0.1)
    with torch.no_grad():
        ours = conv.slope(slope, norm, lipschitz.operator_norm_upper_bound)
        theirs = layer.slope(slope, norm, lipschitz.operator_norm_upper_bound)
        assert (ours.unit >= theirs.unit * (1 - 1e-12)).all() and (ours.whole >= theirs.whole * (1 - 1e-9))
        if norm != "l1":
            assert torch.allclose(ours.unit, theirs.unit, rtol=1e-12)
        lower = torch.randn(3, conv.in_features, generator=g, dtype=torch.float64)
        upper = lower + torch.rand(3, conv.in_features, generator=g, dtype=torch.float64)
        low, high = conv.interval(lower, upper)
        dense_low, dense_high = layer.interval(lower, upper)
        assert torch.allclose(low, dense_low, rtol=1e-12, atol=1e-12) and torch.allclose(high, dense_high, rtol=1e-12,
                                                                                             atol=1e-12)
        center = (lower + upper) / 2
        ball = Ball(norm, torch.rand(3, generator=g, dtype=torch.float64))
        low, high = conv.ball_range(center, ball)
        dense_low, dense_high = layer.ball_range(center, ball)  # exact (Hoelder, attained)
        if norm == "l1":  # the rows' L-inf norms bounded by the kernel's largest entry: never narrower
            assert (low <= dense_low + 1e-12 * (1 + dense_low.abs())).all()
            assert (high >= dense_high - 1e-12 * (1 + dense_high.abs())).all()
        else:
            assert torch.allclose(low, dense_low, rtol=1e-12, atol=1e-12)
            assert torch.allclose(high, dense_high, rtol=1e-12, atol=1e-12)
        low, high = conv.interval(lower, upper)
        corners = torch.where(torch.rand(64, 3, conv.in_features, generator=g) < 0.5, lower, upper)
        values = conv(corners)
        slack = 1e-12 * (1 + values.abs())
        assert (values >= low - slack).all() and (values <= high + slack).all()


@given(convolutions(), st.sampled_from([1, 2, 3]), seeds)
@settings(max_examples=60, deadline=None)
def test_a_convolutions_group_differences_are_the_dense_rows(conv, group, seed):
    """`differences` gives the dense matrix's rows W_a - W_b in the same order, within a pixel's channels or,
    for groups across pixels, from the matrix itself."""
    assume(conv.out_features % group == 0)  # else no GroupSort of this size can follow
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, conv.in_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(conv.differences(group)(x), dense(conv).differences(group)(x), rtol=1e-10,
                              atol=1e-10 * (1 + conv.weight.abs().max()))


@given(convolutions(), st.sampled_from([1e-3, 1.0, 1e3]), seeds)
@settings(max_examples=80, deadline=None)
def test_a_convolutions_rounding_rule_bounds_float32_convolutions(conv, scale, seed):
    """Attacked in float32: the convolution of an input h^ within `error` of h, computed by torch in float32 in
    any batch, is within the rounding rule's bound of the exact (float64) convolution of h, with and without
    the error vector's norm."""
    g = torch.Generator().manual_seed(seed)
    h = scale * torch.randn(16, conv.in_features, generator=g, dtype=torch.float64)
    error = 1e-4 * scale * torch.rand(16, conv.in_features, generator=g, dtype=torch.float64)
    h_hat = (h + error * (2 * torch.rand(h.shape, generator=g, dtype=torch.float64) - 1)).float()
    error = torch.maximum(error, (h_hat.double() - h).abs())
    magnitude = torch.maximum(h.abs(), h_hat.double().abs())
    with torch.no_grad():
        exact = conv(h)
        computed = torch.cat([conv.float()(h_hat[:5]), conv.float()(h_hat[5:])]).double()
        conv.double()
        bound, _ = conv.rounding(error, magnitude, torch.float32)
        by_norm, out_norm = conv.rounding(error, magnitude, torch.float32, torch.linalg.vector_norm(error, dim=1),
                                          conv.operator_norm("l2", lipschitz.operator_norm_upper_bound),
                                          magnitude_norm=torch.linalg.vector_norm(magnitude, dim=1))
    slack = 1e-13 * (1 + exact.abs())
    assert ((computed - exact).abs() <= bound + slack).all()
    assert ((computed - exact).abs() <= by_norm + slack).all()
    assert (torch.linalg.vector_norm(computed - exact, dim=1) <= out_norm * (1 + 1e-12)).all()
    assert not rounding.linear_overflows(conv, magnitude, torch.float32).any()
    rows = conv.row_norms("linf").detach()  # the row L1 norms: a magnitude 1e39 / their largest overflows
    assume(rows.max() > 0)
    assert rounding.linear_overflows(conv, torch.full_like(magnitude, 1e39) / rows.max(), torch.float32).all()


def test_invertible_downsampling_is_pixel_unshuffle_and_a_permutation():
    """The flat channels-last image maps as torch.nn.functional.pixel_unshuffle; every rule permutes its units."""
    shape = (4, 6, 3)
    down = Downsample(shape)
    x = torch.randn(2, 72, dtype=torch.float64)
    images = x.view(2, 4, 6, 3).permute(0, 3, 1, 2)
    expected = F.pixel_unshuffle(images, 2).permute(0, 2, 3, 1).flatten(1)
    assert torch.equal(down(x), expected)
    order = down(torch.arange(72.0)[None])[0]
    assert sorted(order.tolist()) == list(range(72)) and down.out_shape == (2, 3, 12)
    slope = down.slope(Slope(x[0].abs(), torch.tensor(2.0)), "l2", lipschitz.operator_norm)
    assert torch.equal(slope.unit, down(x[0].abs())) and slope.whole == 2.0
    box = Box(x, x + 1, ball=Ball("l2", 0.5), center=x + 0.5)
    after = down.propagate(box, Step())
    assert torch.equal(after.lower, down(x)) and torch.equal(after.center, down(x + 0.5)) and after.ball == box.ball
    errors = torch.stack([x.abs(), 2 * x.abs()])  # a permutation computes nothing: each unit keeps its own error
    moved, norm = down.rounding(errors, torch.tensor([3.0, 4.0]))
    assert torch.equal(moved, torch.stack([down(x.abs()), down(2 * x.abs())])) and norm.tolist() == [3.0, 4.0]
    with pytest.raises(ConfigError, match="not even"):
        Downsample((5, 4, 1))


@pytest.mark.parametrize("into, out, kernel", [(4, 16, 3), (64, 32, 3), (8, 8, 5), (3, 3, 1), (2, 6, 3)])
def test_bcop_convolutions_are_orthogonal(into, out, kernel):
    """BCOP's circular convolution has every singular value 1 (an isometry, or a co-isometry where channels are
    cut) to float64 tolerance, and a gradient reaches its free matrices."""
    torch.manual_seed(into * out + kernel)
    conv = Convolution((7, 7, into), out, kernel, 1, kernel // 2, padding_mode="circular").double()
    bcop.orthogonalise_(conv, Bjorck(40))
    values = torch.linalg.svdvals(conv.matrix())
    assert torch.allclose(values, torch.ones_like(values), atol=1e-10)
    conv(torch.randn(2, conv.in_features, dtype=torch.float64)).square().sum().backward()
    free = conv.parametrizations.weight.original
    assert free.grad is not None and free.grad.abs().sum() > 0


def test_bcops_zero_padded_kernel_is_only_a_contraction():
    """The same kernel with zero padding is 1-Lipschitz but not orthogonal (why bcop pads circularly); a plain
    random kernel is neither."""
    torch.manual_seed(0)
    conv = Convolution((6, 6, 4), 4, 3, 1, 1, padding_mode="circular").double()
    bcop.orthogonalise_(conv, Bjorck(40))
    with torch.no_grad():
        zero = Convolution.of(Convolution((6, 6, 4), 4, 3, 1, 1).double(), conv.weight.detach(), conv.bias.detach())
        values = torch.linalg.svdvals(zero.matrix())
    assert values.max() <= 1 + 1e-10 and values.min() < 0.99


def test_a_bad_convolution_entry_is_refused_in_one_line():
    for convs, fragment in ((("16:4:2",), "write C:K:S:P"), (("bcop:16:4",), "write"), (("x",), "write"),
                            (("8:29:1:0",), "cannot take"), (("3:3:1:1",), "do not divide"),
                            (("down", "down", "down"), "not even")):
        with pytest.raises(ConfigError, match=fragment):
            MLPConfig(convs=convs, group_size=2)
    with pytest.raises(ConfigError, match="square image"):
        MLPConfig(in_features=10, convs=("4:3:1:1",))


def test_a_cnn_keeps_a_convolution_followed_by_an_activation_and_its_width():
    model = LipschitzMLP(MLPConfig(convs=("16:4:2:1", "down", "bcop:32:3"), hidden=(100,), activation="relu"))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Convolution", "ReLU", "Downsample", "Convolution", "ReLU", "Linear", "ReLU", "Linear"]
    assert model.layers[5].in_features == 7 * 7 * 32 and model.layers[3].padding_mode == "circular"
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@given(convolutions())
@settings(max_examples=30, deadline=None)
def test_the_matrix_free_spectral_estimate_never_exceeds_the_dense_norm(conv):
    """The training penalty's estimate stays below the L2 norm (power iteration converges from below) and near it
    after enough steps, where its start (the ones vector) has a part along the top singular vectors: a
    symmetric convolution can keep it in a subspace without them (for a circular one, constant images), and
    there it stays below. A certificate never takes it (`operator_norm` with the proved bound takes the matrix)."""
    with torch.no_grad():
        _, singular, right = torch.linalg.svd(conv.matrix())
        exact = singular[0]
        start = torch.ones(right.shape[1], dtype=right.dtype) / right.shape[1] ** 0.5
        top_part = (right[: len(singular)][singular >= 0.95 * exact] @ start).norm()
    estimate = conv.spectral_norm_estimate(first=200)
    assert estimate <= exact * (1 + 1e-9) + 1e-300
    assert estimate >= exact * 0.9 or exact == 0 or top_part < 1e-3
    again = conv.spectral_norm_estimate()  # two more steps from where the last call stopped
    assert again <= exact * (1 + 1e-9) + 1e-300 and again >= estimate * (1 - 1e-9)
    estimate.backward()
    assert conv.weight.grad is not None


def test_a_trained_cnn_is_certified_from_its_checkpoint_alone(cnn_trained, mnist_root, run_script):
    """One epoch of a small IBP-trained CNN on real MNIST: the checkpoint records its layers, so certify.py needs
    no flag to print the figures training printed; APGD breaks no certified digit; exact verification settles
    the first digits, calling robust at least every digit IBP certifies there."""
    checkpoint, stdout = cnn_trained
    trained = stdout.strip().splitlines()[-3:-1]
    certified = run_script("certify.py", checkpoint, "--method", "ibp", "--data-dir", mnist_root)
    assert certified.returncode == 0, certified.stderr
    assert certified.stdout.strip().splitlines()[-2:] == trained
    attacked = run_script("certify.py", checkpoint, "--method", "ibp", "--attack", "--limit", "300",
                          "--data-dir", mnist_root)
    assert attacked.returncode == 0, attacked.stderr  # status 1 where the attack breaks a certified digit
    few = ("--limit", "40", "--data-dir", mnist_root)
    ibp = run_script("certify.py", checkpoint, "--method", "ibp", *few)
    exact = run_script("certify.py", checkpoint, "--method", "exact", "--workers", "1", *few)
    assert ibp.returncode == 0 and exact.returncode == 0, exact.stderr
    certified = float(ibp.stdout.strip().splitlines()[-1].split()[-1])
    counts = {line.split()[0]: int(line.split()[1]) for line in exact.stdout.splitlines()
              if line.split() and line.split()[0] in ("robust", "counterexample", "timeout", "undecided")}
    assert counts["timeout"] == counts["undecided"] == 0 and counts["robust"] + counts["counterexample"] == 40
    assert 100 * counts["robust"] / 40 >= certified


def test_a_trained_bcop_net_stores_orthogonal_kernels(tmp_path, mnist_root, run_script):
    """A short BCOP run: the saved kernels are plain parameters whose proved L2 norm is 1 to float32 accuracy,
    and the checkpoint certifies in L2 as training reported."""
    run = run_script("train_mnist.py", "--convs", "down,bcop:8:3", "--hidden", "20", "--activation", "maxmin",
                     "--constraint", "bjorck", "--loss", "lmt", "--norm", "l2", "--cert_magnitude", "1.58",
                     "--method", "margin", "--lc_penalty", "0", "--epochs", "1", "--data-dir", mnist_root,
                     "--save-dir", tmp_path, "--save-fn", "bcop.p")
    assert run.returncode == 0, run.stderr
    from checkpoints import load_checkpoint

    model = load_checkpoint(tmp_path / "bcop.p").model
    conv = model.affine_layers()[0]
    assert isinstance(conv, Convolution) and not hasattr(conv, "parametrizations")
    proved = lipschitz.l2_spectral_norm_upper_bound(conv.matrix().detach())
    assert abs(float(proved) - 1) < 1e-5
    certified = run_script("certify.py", tmp_path / "bcop.p", "--norm", "l2", "--cert_magnitude", "1.58",
                           "--method", "margin", "--data-dir", mnist_root)
    assert certified.returncode == 0, certified.stderr
    assert certified.stdout.strip().splitlines()[-2:] == run.stdout.strip().splitlines()[-3:-1]


def test_a_frozen_bcop_network_computes_what_the_parametrised_one_did():
    """`orthonormal.frozen` rebuilds the network on the meta device and copies the computed kernels in: the plain
    copy's logits and its certified bounds are those of the network trained (a stateful layer left on the meta
    device once made them garbage, which only the clean-certified check caught), and of `freeze_`'s copy. The
    kernels are computed without autograd, as in evaluation: with it, some CPUs' kernels round otherwise."""
    import orthonormal
    import training

    recipe = training.Recipe(convs=("down", "bcop:8:3", "down"), hidden=(20,), activation="maxmin",
                             constraint="bjorck", norm="l2")
    model = LipschitzMLP(recipe.model_config())
    training.start_constrained_(model, recipe)
    plain = orthonormal.frozen(model)
    assert plain is not model and not orthonormal.is_orthonormalised(plain)
    x = torch.rand(6, 784)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    proved = lipschitz.l2_spectral_norm_upper_bound(plain.affine_layers()[0].matrix().detach())
    assert abs(float(proved) - 1) < 1e-5
    with torch.no_grad():  # and the weights that freeze_ leaves in the model, bit for bit
        assert torch.equal(plain(x), orthonormal.freeze_(model)(x))


def test_every_certificate_of_a_cnn_convolves_with_cudnn_off(monkeypatch):
    """cuDNN may convolve by Winograd or FFT, or round float32 to TF32: outside the dot-product model the
    rounding rules prove. Every convolution a certificate computes must run with it off, on any device."""
    seen: list[bool] = []
    conv2d = F.conv2d

    def recording(*args, **kwargs):
        seen.append(torch.backends.cudnn.enabled)
        return conv2d(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d", recording)
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=36, convs=("4:3:1:1", "bcop:4:3"), hidden=(4,), out_features=3,
                                   group_size=2)).eval()
    x, labels = torch.rand(5, 36), torch.randint(0, 3, (5,))
    ball = Ball("linf", 0.01, (0.0, 1.0))
    masks = measure.certify_split(model, Split(x, labels), ball, ("global", "margin", "ibp"))
    assert set(masks) >= {"clean", "global", "ibp"} and seen
    model.certified_logit_bounds("l2")
    model.certified_slopes("linf")
    milp.verify(model, x[0], int(labels[0]), ball, relax=True)
    attacks.ibp_open_rivals(model, x, labels, ball)  # rules rivals out by IBP's certified bounds
    assert torch.backends.cudnn.enabled, "the flag is restored afterwards"
    assert len(seen) > 3 and not any(seen), f"{seen.count(True)} of {len(seen)} convolutions ran with cuDNN on"


def test_exact_arithmetic_turns_cudnn_off_refuses_tf32_products_and_restores_both():
    with rounding.exact_arithmetic():
        assert not torch.backends.cudnn.enabled and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.enabled
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with pytest.raises(ConfigError, match="IEEE float32 matrix products"):
            with rounding.exact_arithmetic():
                pass
    finally:
        torch.set_float32_matmul_precision(previous)
