"""Export for other verifiers: the network as ONNX, and each digit's robustness property as VNN-LIB, with the
instances.csv of VNN-COMP's benchmark layout.

The ONNX graph is one loop over the operators, each appending its own nodes (`operators.Operator.onnx`): the
normalisation folded into the first Gemm (or written as Sub and Div before a first convolution), a convolution
as one Conv between a Transpose to NCHW and back, the invertible downsampling as Reshape and Transpose, ReLU as
Relu, GroupSort as a sorting network of Min and Max. Input
"input" (1, 784), the pixels in [0, 1] flattened row by row (VNN-LIB's X_0 ... X_783); output "output" (1, 10),
the logits (Y_0 ... Y_9). A property's unsafe set is the disjunction over rival classes j of Y_j >= Y_label:
a verifier that proves it empty has proved the digit robust in real arithmetic (ties count as unsafe).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import ibp
from checkpoints import atomic_write
from errors import ConfigError
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, Split
from models import LipschitzMLP, MLPConfig, in_float64
from onnxgraph import Flow, Graph
from operators import fold_normalisation, require

OPSET = 13  # Gemm, Conv, Relu, Min, Max, Reshape, Transpose, Split (sizes as an input), Concat, Sub, Div
IR_VERSION = 7  # the oldest that carries opset 13, for older readers
NETWORK = "network.onnx"


def onnx_model(model: LipschitzMLP) -> onnx.ModelProto:
    """The network as a checked ONNX model in float32: every operator's `onnx` rule in turn."""
    operators = model.operators()
    require(operators, "ONNX export", "onnx")
    graph, flow = Graph(), Flow("input")
    for operator in operators:
        flow = operator.onnx(graph, flow)
    nodes = [helper.make_node(node.op, node.inputs, ["output" if name == flow.name else name for name in node.outputs],
                              **node.attributes) for node in graph.nodes]
    constants = [numpy_helper.from_array(value, name) for name, value in graph.constants.items()]
    config = model.config
    proto = helper.make_model(
        helper.make_graph(nodes, "lipschitz_mlp", [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, config.in_features])], [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, config.out_features])], constants),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lipschitz-certificate-demo")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


def simplified(model: LipschitzMLP) -> LipschitzMLP:
    """The ReLU net with its normalisation folded into the first layer (mean 0, std 1), every hidden unit dead
    on the whole pixel box [0, 1]^784 dropped, and every kept unit's row (weights and bias) scaled to L1 norm 1,
    the next layer's column scaled back: relu(a z) = a relu(z) for a > 0 (an all-zero row keeps its scale).

    A unit is dead where IBP's upper bound of its input over the box, plus the bounds of both rounding errors
    (`ibp.propagate` in float32), is below 0: it is 0 in exact arithmetic and in the float32 network alike, so
    dropping it changes nothing. The fold and the scaling are computed in float64 and rounded to float32: the
    simplified network is the original up to that rounding of its weights.
    """
    if model.config.activation != "relu":
        raise ConfigError("--export-simplify drops dead ReLU units: it takes ReLU nets only")
    model64 = in_float64(model.cpu())
    centre = torch.full((1, model.config.in_features), 0.5, dtype=torch.float64)
    boxes = ibp.propagate(model64, centre, Ball("linf", 0.5, PIXEL_RANGE), torch.float32)
    layers = model64.affine_layers()
    weights = [layer.weight.detach().clone() for layer in layers]
    biases = [layer.bias.detach().clone() for layer in layers]
    first, normalise = layers[0], model64.input
    weights[0], biases[0] = (torch.from_numpy(a) for a in fold_normalisation(
        first.weight.detach().numpy(), first.bias.detach().numpy(), normalise.mean, normalise.std))
    for depth in range(len(layers) - 1):
        box = boxes[2 + 2 * depth]  # after the hidden Linear layer `depth`: pixels, normalised, then Linear, ReLU
        keep = (box.upper[0] + box.errors[:, 0].sum(dim=0)) >= 0
        if not keep.any():
            raise ConfigError(f"every unit of hidden layer {depth + 1} is dead on [0, 1]^784: the network is constant")
        scale = weights[depth][keep].abs().sum(dim=1)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        weights[depth], biases[depth] = weights[depth][keep] / scale[:, None], biases[depth][keep] / scale
        weights[depth + 1] = weights[depth + 1][:, keep] * scale
    config = MLPConfig(in_features=model.config.in_features, hidden=tuple(len(b) for b in biases[:-1]),
                       out_features=model.config.out_features, activation="relu", mean=0.0, std=1.0)
    result = LipschitzMLP(config)
    with torch.no_grad():
        for layer, weight, bias in zip(result.affine_layers(), weights, biases):
            layer.weight.copy_(weight.float())
            layer.bias.copy_(bias.float())
    return result.eval()


def number(value: float) -> str:
    """A float64 as a decimal that reads back to the same float64, without an exponent (SMT-LIB has none)."""
    text = np.format_float_positional(value, unique=True, trim="0")
    return text if value >= 0 else f"(- {text[1:]})"


def vnnlib(lower: np.ndarray, upper: np.ndarray, label: int, classes: int, comment: str) -> str:
    """A VNN-LIB property: X_i in [lower_i, upper_i], and the unsafe set, some rival j with Y_j >= Y_label."""
    lines = [f"; {comment}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    lines.append("; the input box")
    for i, (low, high) in enumerate(zip(lower.tolist(), upper.tolist())):
        lines += [f"(assert (>= X_{i} {number(low)}))", f"(assert (<= X_{i} {number(high)}))"]
    lines.append(f"; unsafe: some class scores at least the label {label}")
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label]
    lines.append("))")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Benchmark:
    """What `write_benchmark` wrote: the network, one property per digit, and instances.csv."""

    network: Path
    properties: list[Path]
    instances: Path


def write_benchmark(folder: Path, model: LipschitzMLP, split: Split, indices: list[int], ball: Ball,
                    timeout: float) -> Benchmark:
    """folder/network.onnx, folder/prop_<index>.vnnlib for every digit of `split` (its index in the test set
    from `indices`), and folder/instances.csv (network, property, timeout in seconds per line, no header, paths
    relative to the folder), each written atomically. The box is `ball.box`, in float64 from the float32 pixels
    as every certificate here takes it, written exactly."""
    if ball.norm != "linf":
        raise ConfigError("VNN-LIB properties here are L-inf boxes: give --norm linf")
    network = folder / NETWORK
    content = onnx_model(model).SerializeToString()
    atomic_write(network, lambda stream: stream.write(content))
    properties = []
    images, labels = split.images.cpu().double(), split.labels.cpu().tolist()
    lower, upper = ball.box(images)
    where = "cut to [0, 1]" if ball.domain == PIXEL_RANGE else "the whole ball"
    for index, label, low, high in zip(indices, labels, lower.numpy(), upper.numpy()):
        text = vnnlib(low, high, label, model.config.out_features,
                      f"MNIST test digit {index}, label {label}: the L-inf ball of radius {ball.eps!r} around it, "
                      f"{where}; {NETWORK}: input X_0 ... X_{len(low) - 1} (pixels), output Y_0 ... "
                      f"Y_{model.config.out_features - 1} (logits)")
        path = folder / f"prop_{index}.vnnlib"
        atomic_write(path, lambda stream: stream.write(text.encode()))
        properties.append(path)
    rows = "".join(f"{NETWORK},{path.name},{timeout:g}\n" for path in properties)
    instances = folder / "instances.csv"
    atomic_write(instances, lambda stream: stream.write(rows.encode()))
    return Benchmark(network, properties, instances)
