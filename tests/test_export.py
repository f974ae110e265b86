"""ONNX and VNN-LIB export: onnxruntime replays the float32 logits of the network (and of its simplified form)
within their proved rounding bounds, every property reads back to the certificates' box and label, and the
export's misuses are refused in one line.

Tolerance: torch's float32 logits of the original and onnxruntime's of the exported network, each summed in
its own order, differ by at most 2 (A + A') + |f - f'|: A and A' are the two networks' rounding allowances at
the digit (`allowance.logit_allowance` at radius 0), each bounding how far the float32 logits, in any order of
summation, and the float64 logits f can be from the exact ones; the exported network is the original up to the
float32 rounding of its folded (and rescaled) weights, which the float64 difference |f - f'| measures. On the
demo's nets the difference measured is at most 4e-6, the bound 1e-3 to 4e-3 (a worst case over every order).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from hypothesis import given, settings
from onnx import numpy_helper

import allowance
import certify
import export
from checkpoints import Expected, load_checkpoint
from conftest import run_in_process
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, load_mnist
from errors import ConfigError
from models import LipschitzMLP, MLPConfig, in_float64
from nets import random_nets, seeds

DIGITS = 20
RADIUS = 0.1
NETS = {
    "groupsort": ("groupsort.p", ["--activation", "groupsort", "--group_size", "10"], Expected("groupsort", 10)),
    "relu": ("relu.p", ["--activation", "relu"], Expected("relu")),
    "relu-simplified": ("relu.p", ["--activation", "relu", "--export-simplify"], Expected("relu")),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, original_demo, mnist_root) -> dict[str, tuple[Path, LipschitzMLP]]:
    """Each of NETS exported for the first DIGITS test digits, with the original network it came from."""
    folders = {}
    for name, (file, flags, expected) in NETS.items():
        folder = tmp_path_factory.mktemp(name)
        certify.main([str(original_demo / file), *flags, "--data-dir", str(mnist_root), "--limit", str(DIGITS),
                      "--cert_magnitude", str(RADIUS), "--time-limit", "30", "--export-vnnlib", str(folder)])
        folders[name] = (folder, load_checkpoint(original_demo / file, expected).model)
    return folders


@pytest.fixture(scope="module")
def digits(mnist_root):
    (test,) = load_mnist(mnist_root, splits=("test",))
    return test.head(DIGITS)


def as_network(path: Path, like: MLPConfig) -> LipschitzMLP:
    """The ONNX file's network read back as an MLP (no normalisation: it is folded into the first Gemm), from its
    Gemm weights in order, with the activation of `like`."""
    proto = onnx.load(path)
    constants = {c.name: numpy_helper.to_array(c) for c in proto.graph.initializer}
    gemms = [node for node in proto.graph.node if node.op_type == "Gemm"]
    weights = [(constants[node.input[1]], constants[node.input[2]]) for node in gemms]
    config = MLPConfig(in_features=like.in_features, hidden=tuple(len(b) for _, b in weights[:-1]),
                       out_features=like.out_features, activation=like.activation, group_size=like.group_size,
                       mean=0.0, std=1.0)
    network = LipschitzMLP(config)
    with torch.no_grad():
        for layer, (weight, bias) in zip(network.affine_layers(), weights):
            layer.weight.copy_(torch.from_numpy(weight.copy()))
            layer.bias.copy_(torch.from_numpy(bias.copy()))
    return network.eval()


@pytest.mark.parametrize("name", NETS)
def test_onnxruntime_replays_the_float32_logits_within_their_rounding_bounds(name, exported, digits):
    folder, original = exported[name]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(folder / "network.onnx"), options, providers=["CPUExecutionProvider"])
    replayed = np.concatenate([session.run(["output"], {"input": image[None].numpy()})[0] for image in digits.images])
    with torch.no_grad():
        logits = original(digits.images).numpy()
    network = as_network(folder / "network.onnx", original.config)
    x64, point = digits.images.double(), Ball("linf", 0.0, PIXEL_RANGE)
    with torch.no_grad():
        bounds = [allowance.logit_allowance(in_float64(net), x64, point) for net in (original, network)]
        apart = (in_float64(original)(x64) - in_float64(network)(x64)).abs()
    tolerance = (2 * (bounds[0] + bounds[1]) + apart).numpy()
    print(f"{name}: largest difference {np.abs(replayed - logits).max():.2e}, tolerance {tolerance.min():.2e} "
          f"to {tolerance.max():.2e}")
    assert (np.abs(replayed - logits) <= tolerance).all()
    assert (replayed.argmax(axis=1) == logits.argmax(axis=1)).all()
    operators = {node.op_type for node in onnx.load(folder / "network.onnx").graph.node}
    assert operators == ({"Gemm", "Reshape", "Split", "Min", "Max", "Concat"} if name == "groupsort"
                         else {"Gemm", "Relu"})


def test_the_simplified_export_drops_dead_units_and_scales_every_row_to_l1_norm_one(exported):
    folder, original = exported["relu-simplified"]
    network = as_network(folder / "network.onnx", original.config)
    first = network.affine_layers()[0]
    assert first.out_features < original.config.hidden[0]
    assert torch.allclose(first.weight.double().abs().sum(dim=1), torch.ones(first.out_features, dtype=torch.float64),
                          rtol=0, atol=784 * 2 ** -24)


def read_vnnlib(text: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """A property as written by `export.vnnlib`: the box's lower and upper ends per input, and the unsafe set's
    (rival, label) pairs, Y_rival >= Y_label; every input and output declared once, every input bounded twice."""
    inputs = len(re.findall(r"^\(declare-const X_(\d+) Real\)$", text, flags=re.M))
    outputs = len(re.findall(r"^\(declare-const Y_(\d+) Real\)$", text, flags=re.M))
    lower, upper = np.full(inputs, np.nan), np.full(inputs, np.nan)
    for relation, i, value in re.findall(r"^\(assert \((>=|<=) X_(\d+) ([0-9.]+)\)\)$", text, flags=re.M):
        ends = lower if relation == ">=" else upper
        assert np.isnan(ends[int(i)])
        ends[int(i)] = float(value)
    unsafe = re.search(r"^\(assert \(or\n(.*?)\n\)\)$", text, flags=re.M | re.S)
    pairs = [(int(j), int(y)) for j, y in re.findall(r"^    \(and \(>= Y_(\d+) Y_(\d+)\)\)$", unsafe[1], flags=re.M)]
    assert len(pairs) == outputs - 1 == len(unsafe[1].splitlines())
    return lower, upper, pairs


@pytest.mark.parametrize("name", ["groupsort", "relu-simplified"])
def test_every_property_reads_back_to_the_certificates_box_and_label(name, exported, digits):
    folder, _ = exported[name]
    lower, upper = Ball("linf", RADIUS, PIXEL_RANGE).box(digits.images.double())
    instances = (folder / "instances.csv").read_text().splitlines()
    assert instances == [f"network.onnx,prop_{index}.vnnlib,30" for index in range(DIGITS)]
    for index, label in enumerate(digits.labels.tolist()):
        low, high, pairs = read_vnnlib((folder / f"prop_{index}.vnnlib").read_text())
        assert np.array_equal(low, lower[index].numpy()) and np.array_equal(high, upper[index].numpy())
        assert ((low >= 0) & (high <= 1)).all()
        assert sorted(pairs) == [(j, label) for j in range(10) if j != label]


@pytest.mark.parametrize("flags, fragment", [
    (["--export-vnnlib", "{tmp}/out", "--export-simplify", "--activation", "groupsort", "--group_size", "10"],
     "--export-simplify drops dead ReLU units: it takes ReLU nets only"),
    (["--export-simplify", "--activation", "relu"], "--export-simplify simplifies the network that --export-vnnlib"),
    (["--export-vnnlib", "{tmp}/out", "--norm", "l2", "--activation", "relu"], "writes L-inf boxes of one radius"),
])
def test_export_misuses_are_refused_in_one_line(flags, fragment, original_demo, mnist_root, tmp_path, capsys):
    checkpoint = original_demo / ("groupsort.p" if "groupsort" in flags else "relu.p")
    argv = [checkpoint, "--data-dir", mnist_root, "--limit", "2", *[f.format(tmp=tmp_path) for f in flags]]
    status, _, err = run_in_process(certify.main, argv, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err


def test_an_operator_without_an_onnx_rule_is_refused():
    import export
    from operators import Activation, MissingRule

    class Square(Activation):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    model = LipschitzMLP(MLPConfig(in_features=4, hidden=(2,), out_features=2, activation="relu"))
    model.layers[1] = Square()
    with pytest.raises(MissingRule, match="ONNX export needs the onnx rule of every layer, and Square has none"):
        export.onnx_model(model)


@given(random_nets(convs=True), seeds)
@settings(max_examples=30, deadline=None)
def test_onnxruntime_replays_convolutional_nets_within_their_rounding_bounds(model64, seed):
    """Random small nets, a third of them convolutional (zero padding, strides, invertible downsampling; BCOP's
    circular padding is refused): the exported float32 network, run by onnxruntime, gives the float32 logits of
    the model to within twice the sum of the two runs' allowances (the same weights, each run summing in its own
    order)."""
    model = model64.float()
    circular = any(getattr(layer, "padding_mode", "zeros") == "circular" for layer in model.layers)
    if circular:
        with pytest.raises(ConfigError, match="circularly padded convolution"):
            export.onnx_model(model)
        return
    session = onnxruntime.InferenceSession(export.onnx_model(model).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = torch.rand(8, model.config.in_features, generator=torch.Generator().manual_seed(seed))
    replayed = np.concatenate([session.run(["output"], {"input": row[None].numpy()})[0] for row in x])
    with torch.no_grad():
        logits = model(x).numpy()
        bound = allowance.logit_allowance(in_float64(model), x.double(), Ball("linf", 0.0, PIXEL_RANGE)).numpy()
    assert (np.abs(replayed - logits) <= 4 * bound).all()


@pytest.mark.parametrize("convs", [("down", "3:3:1:1"), ("4:2:2:0", "down", "2:1:1:0"), ("down", "down")])
def test_onnxruntime_replays_invertible_downsampling(convs):
    """The downsampling's regrouping of pixels into channels, before and after convolutions, as onnxruntime runs
    it: the same logits as the model to within the rounding bounds (a wrong order of the four pixels fails)."""
    torch.manual_seed(0)
    model = LipschitzMLP(MLPConfig(in_features=64, convs=convs, hidden=(6,), out_features=3, activation="relu",
                                   mean=0.2, std=0.5)).eval()
    with torch.no_grad():
        for layer in model.affine_layers():
            layer.weight.normal_()  # no two taps alike, so any other order of pixels changes the logits
    session = onnxruntime.InferenceSession(export.onnx_model(model).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = torch.rand(8, 64, generator=torch.Generator().manual_seed(1))
    replayed = np.concatenate([session.run(["output"], {"input": row[None].numpy()})[0] for row in x])
    with torch.no_grad():
        logits = model(x).numpy()
        bound = allowance.logit_allowance(in_float64(model), x.double(), Ball("linf", 0.0, PIXEL_RANGE)).numpy()
    assert (np.abs(replayed - logits) <= 4 * bound).all()
