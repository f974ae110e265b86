"""BCOP: orthogonal convolutions from orthogonal matrices and symmetric projectors (Li et al., NeurIPS 2019).

A convolution is orthogonal when its taps T_ij (channel matrices) satisfy the
paraunitary identity sum_t T_t^T T_(t+s) = I if s = 0, else 0: its full
(infinite-domain) operator is then an isometry. The 1-D kernel [P, I - P] of a
symmetric projector P is one (P^2 = P, P (I - P) = 0), and so is a product
of such kernels (convolved as matrix polynomials) times an orthogonal matrix
H. BCOP composes k - 1 two-dimensional 2x2 blocks [[P Q, P (I - Q)],
[(I - P) Q, (I - P)(I - Q)]], each the product of a horizontal and a vertical
1-D kernel, into a k x k kernel, every projector P = V V^T from the first C/2
columns of an orthogonal V. Every orthogonal matrix is Bjorck's iteration of a
free matrix (`orthonormal.bjorck`), so the gradient flows to the free ones.
With C = max(channels in, channels out), the C x C kernel is cut to its first
channels: an isometry's columns, or a co-isometry's rows.

As in LConvNet, padding is circular (k // 2 on each side), under which the
paraunitary identity makes the layer exactly orthogonal (an isometry, or a
co-isometry where channels are cut), and strides come from invertible
downsampling before a stride-1 BCOP. Simplified: the kernel is odd (LConvNet's
strided layers use 2x2 kernels after the downsampling, padded on one side). Nothing here is trusted by a certificate: `freeze`
(orthonormal.py) stores the kernel, and its norm is proved from the dense matrix.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from orthonormal import Bjorck, bjorck


def convolve_taps(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The matrix-valued 2-D convolution of two kernels of taps (a, a, C, C) and (b, b, C, C): (a+b-1, a+b-1, C, C),
    tap (i, j) the sum of first[i1, j1] @ second[i2, j2] over i1 + i2 = i, j1 + j2 = j."""
    a, b = first.shape[0], second.shape[0]
    out = first.new_zeros(a + b - 1, a + b - 1, *first.shape[2:])
    for i in range(a):
        for j in range(a):
            out[i:i + b, j:j + b] = out[i:i + b, j:j + b] + first[i, j] @ second
    return out


def orthogonal_kernel(free: torch.Tensor, settings: Bjorck) -> torch.Tensor:
    """The C x C taps (k, k, C, C) of an orthogonal convolution from 2k - 1 free C x C matrices: the first made
    the orthogonal H, each other pair the projectors P, Q of one 2x2 block. Differentiable."""
    orthogonal = bjorck(free, settings)  # the whole stack at once
    size = free.shape[-1]
    eye = torch.eye(size, dtype=free.dtype, device=free.device)
    kernel = orthogonal[0][None, None]
    for first, second in zip(orthogonal[1::2], orthogonal[2::2]):
        half = size // 2
        p, q = first[:, :half] @ first[:, :half].T, second[:, :half] @ second[:, :half].T
        block = torch.stack([torch.stack([p @ q, p @ (eye - q)]), torch.stack([(eye - p) @ q, (eye - p) @ (eye - q)])])
        kernel = convolve_taps(kernel, block)
    return kernel


class BCOP(nn.Module):
    """The parametrisation of a convolution's kernel (out, in, k, k) by BCOP (torch.nn.utils.parametrize): its
    free parameter is 2k - 1 matrices of size C = max(out, in), drawn orthogonal when it is registered."""

    def __init__(self, settings: Bjorck) -> None:
        super().__init__()
        self.settings = settings

    def forward(self, free: torch.Tensor) -> torch.Tensor:
        taps = orthogonal_kernel(free, self.settings)  # (k, k, C, C), tap (i, j) maps channels in to out
        out, into = self.shape[:2]
        return taps[:, :, :out, :into].permute(2, 3, 0, 1)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Fresh orthogonal free matrices for a kernel of `weight`'s shape (its values are not kept)."""
        self.shape = weight.shape
        size, kernel = max(weight.shape[:2]), weight.shape[-1]
        free = weight.new_empty(2 * kernel - 1, size, size)
        for matrix in free:
            nn.init.orthogonal_(matrix)
        return free


def orthogonalise_(conv: nn.Module, settings: Bjorck = Bjorck()) -> None:
    """Register BCOP on a convolution's kernel (odd, square, stride 1)."""
    parametrize.register_parametrization(conv, "weight", BCOP(settings))
