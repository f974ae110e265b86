"""Convolutional layers as operators, on flat vectors: a convolution and the invertible downsampling.

Every operator maps flat rows to flat rows, so a convolution reads and writes
images flattened channels-last, (height, width, channels): consecutive units
are the channels of one pixel, so a GroupSort after a convolution sorts
channels, as in Anil et al.'s and Li et al.'s networks, and the channels-last
view costs no copy. Padding is zeros, or circular for BCOP. Each rule is the dense matrix's
(`operators.Affine`), computed by convolving: a unit's row is its output
channel's kernel placed over its window, cut where the window leaves the
image, so |W| v is the convolution of v with |kernel|, and the rows' L1 and L2
norms are the convolutions of a ones image with |kernel| and kernel^2.

Rounding: a unit is a dot product of channels * kernel^2 products plus its
bias, summed in any order, which covers direct and GEMM-based convolutions (as
PyTorch runs them on a CPU, and on a GPU without cuDNN) but not cuDNN, which
may pick Winograd or FFT algorithms and round float32 to TF32: certificates
speak of the network run that way, and every certificate is computed so
(`rounding.exact_arithmetic`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lipschitz
from errors import ConfigError
from lipschitz import OperatorNorm
from onnxgraph import Flow, Graph
from operators import Activation, Affine, Box, Linear, Slope, Step
from program import Program, Wires

Shape = tuple[int, int, int]  # (height, width, channels) of a flattened image


def unflat(x: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Flat rows (..., h * w * c), channels-last, as images (n, c, h, w) (a view, channels-last in memory)."""
    height, width, channels = shape
    return x.reshape(-1, height, width, channels).permute(0, 3, 1, 2)


def flat(images: torch.Tensor, lead: torch.Size) -> torch.Tensor:
    """Images (n, c, h, w) as flat rows (*lead, h * w * c), channels-last."""
    return images.permute(0, 2, 3, 1).reshape(*lead, -1)


class Convolution(Affine, nn.Conv2d):
    """A 2-D convolution on flat channels-last images of shape `shape` (height, width, channels), padded with
    zeros or circularly (for BCOP: stride 1, an odd kernel no larger than the image, "same" padding), with
    every rule of an affine layer."""

    orthogonal = False  # whether training keeps the kernel orthogonal (`bcop.py`)

    def __init__(self, shape: Shape, channels: int, kernel: int, stride: int = 1, padding: int = 0,
                 orthogonal: bool = False, padding_mode: str = "zeros") -> None:
        height, width, in_channels = shape
        out_h, out_w = ((side + 2 * padding - kernel) // stride + 1 for side in (height, width))
        circular = padding_mode == "circular"
        if (min(channels, kernel, stride) < 1 or padding < 0 or min(out_h, out_w) < 1
                or (circular and (stride != 1 or 2 * padding + 1 != kernel or kernel > min(height, width)))):
            raise ConfigError(f"a convolution of {channels} channels, kernel {kernel}, stride {stride} and "
                              f"padding {padding} cannot take a {height}x{width} image")
        nn.Conv2d.__init__(self, in_channels, channels, kernel, stride, padding, padding_mode=padding_mode)
        self.shape, self.out_shape = shape, (out_h, out_w, channels)
        self.in_features, self.out_features = math.prod(shape), math.prod(self.out_shape)
        self.orthogonal = orthogonal

    @property
    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size[0] * self.kernel_size[1]

    @property
    def longest_sum(self) -> int:
        """The input's units, or a column's terms (every output channel's every tap), the larger."""
        return max(self.in_features, self.out_channels * self.kernel_size[0] * self.kernel_size[1])

    @property
    def unit_bias(self) -> torch.Tensor:
        """Every unit's bias: its channel's, at every pixel."""
        return self.bias.repeat(self.out_features // self.out_channels)

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The convolution with kernel `weight` and `bias` of flat rows x (any leading dimensions)."""
        images, padding = unflat(x, self.shape), self.padding
        if self.padding_mode == "circular":
            images, padding = F.pad(images, [padding[1], padding[1], padding[0], padding[0]], mode="circular"), 0
        images = F.conv2d(images, weight, bias, self.stride, padding)
        return flat(images, x.shape[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.weight, self.bias)

    def affine(self, h: torch.Tensor) -> torch.Tensor:
        """The forward pass."""
        return self(h)

    def abs_apply(self, v: torch.Tensor) -> torch.Tensor:
        """|W| v: the convolution with |kernel| and no bias."""
        return self.apply(v, self.weight.abs(), None)

    def row_norms(self, norm: str) -> torch.Tensor:
        """||w||_q of every unit's row: exactly, as the convolution of a ones image with |kernel| (q = 1) or
        kernel^2 (q = 2, then the root); for q = inf (`norm` l1), the kernel's largest entry, an upper bound."""
        lipschitz.check_norm(norm)
        ones = self.weight.new_ones(self.in_features)
        if norm == "linf":
            return self.apply(ones, self.weight.abs(), None)
        if norm == "l2":
            return self.apply(ones, self.weight.square(), None).sqrt()
        largest = self.weight.abs().amax(dim=(1, 2, 3))
        return largest.repeat(self.out_features // self.out_channels)

    def column_norms(self) -> torch.Tensor:
        """Every input unit's column L1 norm, exactly: the transposed convolution of a ones image with |kernel|;
        with circular padding (stride 1, the image no smaller than the kernel) every tap reads each pixel once, so
        its channel's whole |kernel| sum."""
        if self.padding_mode == "circular":
            return self.weight.abs().sum(dim=(0, 2, 3)).repeat(self.in_features // self.in_channels)
        out_h, out_w, _ = self.out_shape
        ones = self.weight.new_ones(1, self.out_channels, out_h, out_w)
        height, width, _ = self.shape
        extra = [side - ((out - 1) * self.stride[0] - 2 * self.padding[0] + self.kernel_size[0])
                 for side, out in ((height, out_h), (width, out_w))]
        columns = F.conv_transpose2d(ones, self.weight.abs(), None, self.stride, self.padding, tuple(extra))
        return flat(columns, torch.Size([]))

    def matrix(self) -> torch.Tensor:
        """The dense (out_features, in_features) matrix: the convolution of every basis image, exact (each entry
        is one kernel weight or zero). Outside autograd the same tensor is served again while the kernel equals
        the one it was built from by value, so that a proved norm of it is computed once (`models`)."""
        weight = self.weight
        memo = self.__dict__.get("_matrix_memo")
        if memo is not None and memo[0].dtype == weight.dtype and torch.equal(memo[0], weight):
            return memo[1]
        basis = torch.eye(self.in_features, dtype=weight.dtype, device=weight.device)
        matrix = self.apply(basis, weight, None).T
        if not (torch.is_grad_enabled() and weight.requires_grad):
            self.__dict__["_matrix_memo"] = (weight.detach().clone(), matrix)
        return matrix

    def operator_norm(self, norm: str, operator_norm: OperatorNorm) -> torch.Tensor:
        """||W||_{p->p}: the largest row (linf) or column (l1) L1 norm, exactly; in l2, `operator_norm` of the
        dense matrix (a proved bound in certificates, an estimate in the training penalty)."""
        if norm == "linf":
            return self.row_norms("linf").max()
        if norm == "l1":
            return self.column_norms().max()
        if operator_norm is lipschitz.operator_norm_estimate:
            return self.spectral_norm_estimate()
        return operator_norm(self.matrix(), norm)

    def spectral_norm_estimate(self, iterations: int = 2, first: int = 20) -> torch.Tensor:
        """`lipschitz.l2_spectral_norm_estimate` without the dense matrix: power iteration on W^T W, W applied by
        the convolution and W^T by its adjoint (autograd's vector-Jacobian product). Each call goes on from the
        last call's vector (`first` steps from a fixed start on the first call, `iterations` after), as
        spectral normalisation does, the kernel changing little between training steps. An ESTIMATE from
        below (||W v|| <= ||W|| for every unit v), for the training penalty only; differentiable in the kernel.
        The fixed start (ones) can lie in a subspace the iteration keeps, missing the top singular vectors:
        constant images under a circular convolution, whose top mode need not be constant (BCOP's orthogonal
        kernels have every singular value 1, so it misses nothing there)."""
        weight = self.weight.detach()
        vector = self.__dict__.get("_power_vector")
        if vector is None or vector.dtype != weight.dtype or vector.device != weight.device:
            vector, iterations = weight.new_ones(1, self.in_features), first
        for _ in range(iterations):
            with torch.enable_grad():
                v = vector.detach().requires_grad_()
                image = self.apply(v, weight, None)
                (adjoint,) = torch.autograd.grad(image, v, image.detach())
            vector = adjoint.detach() / adjoint.norm().clamp_min(torch.finfo(weight.dtype).tiny)
        self.__dict__["_power_vector"] = vector
        return self.apply(vector, self.weight, None).norm()

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        """Per unit min(|w| . b, ||w||_q B); whole min(||W||_{p->p} B, ||b'||_p), as for a Linear layer."""
        unit = self.abs_apply(slope.unit)
        if norm == "linf":
            return Slope(unit, lipschitz.vector_norm(unit, norm))
        unit = torch.minimum(unit, self.row_norms(norm) * slope.whole)
        whole = torch.minimum(self.operator_norm(norm, operator_norm) * slope.whole, lipschitz.vector_norm(unit, norm))
        return Slope(unit, whole)

    def differences(self, group: int) -> Affine:
        """A convolution whose channels at each pixel are z_a - z_b for every two channels a, b of each group of
        `group` consecutive channels there, ordered (group, a, b): the kernels' and biases' differences. Groups
        that span pixels (FullSort) take the dense matrix's rows."""
        if self.out_channels % group:
            return Linear.of(self.matrix(), self.unit_bias).differences(group)
        kernels = self.weight.unflatten(0, (-1, group))
        offsets = self.bias.unflatten(0, (-1, group))
        return self.of(self, (kernels[:, :, None] - kernels[:, None, :]).flatten(0, 2),
                       (offsets[:, :, None] - offsets[:, None, :]).flatten())

    @classmethod
    def of(cls, like: Convolution, weight: torch.Tensor, bias: torch.Tensor) -> Convolution:
        """A convolution of `like`'s input shape, stride and padding over the tensors `weight` and `bias`, not
        copied and not parameters."""
        operator = cls.__new__(cls)
        nn.Module.__init__(operator)
        operator.in_channels, operator.out_channels = weight.shape[1], weight.shape[0]
        operator.kernel_size, operator.stride, operator.padding = like.kernel_size, like.stride, like.padding
        operator.dilation, operator.groups, operator.padding_mode = (1, 1), 1, like.padding_mode
        operator.weight, operator.bias = weight, bias
        out_h, out_w, _ = like.out_shape
        operator.shape, operator.out_shape = like.shape, (out_h, out_w, weight.shape[0])
        operator.in_features, operator.out_features = like.in_features, out_h * out_w * weight.shape[0]
        return operator

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        """The flat channels-last rows as images (Reshape, Transpose to NCHW), one Conv in float32 with the
        kernel, bias, stride and zero padding, and back (Transpose, Reshape). A pending normalisation becomes
        Sub and Div nodes before it, the arithmetic of `operators.Normalise` (folded into the kernel it would be
        wrong at the border, where the padding's zeros are normalised values). Circular padding (BCOP) has no
        ONNX form at the opset written, and is refused."""
        if self.padding_mode != "zeros":
            raise ConfigError("a circularly padded convolution (BCOP) has no ONNX form at opset 13")
        name = flow.name
        if flow.pending:
            name = graph.node("Sub", [name, graph.constant("mean", np.array(flow.mean, dtype=np.float32))], "centred")[0]
            name = graph.node("Div", [name, graph.constant("std", np.array(flow.std, dtype=np.float32))], "normalised")[0]
        images = nchw(graph, name, self.shape)
        weight, bias = (graph.constant(hint, tensor.detach().cpu().numpy().astype(np.float32))
                        for hint, tensor in (("kernel", self.weight), ("bias", self.bias)))
        (padding, _), (stride, _) = self.padding, self.stride
        out = graph.node("Conv", [images, weight, bias], "conv", kernel_shape=list(self.kernel_size),
                         strides=[stride, stride], pads=[padding] * 4)[0]
        return Flow(flat_rows(graph, out))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shape={self.shape}"


def nchw(graph: Graph, name: str, shape: Shape) -> str:
    """ONNX nodes that read flat channels-last rows (n, h * w * c) as images (n, c, h, w)."""
    height, width, channels = shape
    rows = graph.node("Reshape", [name, graph.constant("shape", np.array([-1, height, width, channels], np.int64))],
                      "nhwc")[0]
    return graph.node("Transpose", [rows], "nchw", perm=[0, 3, 1, 2])[0]


def flat_rows(graph: Graph, name: str) -> str:
    """ONNX nodes that write images (n, c, h, w) as flat channels-last rows (n, h * w * c)."""
    images = graph.node("Transpose", [name], "nhwc", perm=[0, 2, 3, 1])[0]
    return graph.node("Reshape", [images, graph.constant("shape", np.array([0, -1], np.int64))], "flat")[0]


class Downsample(Activation):
    """Invertible downsampling (Jacobsen et al. 2018): every 2x2 block of pixels becomes one pixel with four
    times the channels, as torch.nn.functional.pixel_unshuffle, on flat channels-last images. A permutation of
    the units: every p-norm, every interval and every rounding error passes unchanged, only reordered."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        height, width, channels = shape
        if height % 2 or width % 2:
            raise ConfigError(f"invertible downsampling halves the image: {height}x{width} is not even")
        self.shape, self.out_shape = shape, (height // 2, width // 2, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flat rows (any leading dimensions) rearranged: no arithmetic, so nothing rounds. It holds no state (a
        model rebuilt on the meta device, as `orthonormal.frozen` does, must lose nothing)."""
        return flat(F.pixel_unshuffle(unflat(x, self.shape), 2), x.shape[:-1])

    def slope(self, slope: Slope, norm: str, operator_norm: OperatorNorm) -> Slope:
        """The units permuted; the whole bound unchanged (a permutation keeps every p-norm)."""
        return Slope(self(slope.unit), slope.whole)

    def interval(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(lower), self(upper)

    def rounding(self, errors: torch.Tensor, error_norm: torch.Tensor | None, upper: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """No rounding: the errors permuted, their norm unchanged."""
        return self(errors), error_norm

    def propagate(self, box: Box, step: Step) -> Box:
        """`Activation.propagate`, with the ball and its centre permuted too (a permutation maps a p-ball onto
        the p-ball of the same radius)."""
        after = super().propagate(box, step)
        if box.ball is None:
            return after
        return Box(after.lower, after.upper, after.errors, after.magnitude, after.error_norm, after.overflow,
                   ball=box.ball, center=self(box.center), point=after.point)

    def encode(self, program: Program, wires: Wires, before: Box, after: Box) -> Wires:
        """The same wires, permuted as the units are: no variable, no row. A pending normalisation stays pending
        (it is the same for every unit)."""
        order = self(torch.arange(len(wires), dtype=torch.float64)).long().tolist()
        return Wires([wires[k] for k in order], wires.mean, wires.std, wires.pending)

    def onnx(self, graph: Graph, flow: Flow) -> Flow:
        """The flat rows (pixel (2i + a, 2j + b), channel c) regrouped as (i, j, 4c + 2a + b) by one Reshape, one
        Transpose and one Reshape: no arithmetic. A pending normalisation stays pending."""
        height, width, channels = self.shape
        blocks = graph.node("Reshape", [flow.name, graph.constant(
            "shape", np.array([-1, height // 2, 2, width // 2, 2, channels], np.int64))], "blocks")[0]
        moved = graph.node("Transpose", [blocks], "unshuffled", perm=[0, 1, 3, 5, 2, 4])[0]
        rows = graph.node("Reshape", [moved, graph.constant("shape", np.array([0, -1], np.int64))], "flat")[0]
        return Flow(rows, flow.mean, flow.std, flow.pending)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"
