"""Clean and certified accuracy, and a CLI that certifies a saved model.

    python certify.py outputs/mnist_groupsort.p --cert_magnitude 0.1

prints the same two lines as the end of `train_mnist.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import cli
import lipschitz
from mnist_data import Split, load_mnist
from models import LipschitzMLP, load_checkpoint

EVAL_BATCH = 10_000


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit, per row (zero on a tie)."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def certified_linf_global(
    logits: torch.Tensor, labels: torch.Tensor, logit_bounds: torch.Tensor, eps: float
) -> torch.Tensor:
    """Per example: correct, and no x' with ||x' - x||_inf <= eps changes the prediction.

    The demo's rule: margin > eps * 2 * max_k L_k. Sound because every logit
    difference moves by at most 2 max_k L_k * eps inside the ball
    (`lipschitz.linf_margin_bound`), so the top logit stays on top. Strict, so a
    tie is never certified, not even at eps = 0.
    """
    correct = logits.argmax(dim=1) == labels
    return correct & (top2_margin(logits) > eps * lipschitz.linf_margin_bound(logit_bounds))


@dataclass(frozen=True)
class Accuracy:
    """Clean and certified accuracy on a split, in percent."""

    clean: float
    certified: float

    def lines(self) -> str:
        return (
            f"test acc on clean examples (%): {self.clean:.3f}\n"
            f"test certified on clean examples (%): {self.certified:.3f}"
        )


@torch.no_grad()
def evaluate(model: LipschitzMLP, split: Split, eps: float, batch_size: int = EVAL_BATCH) -> Accuracy:
    """Clean and certified (L-inf radius eps) accuracy of `model` on `split`."""
    was_training = model.training
    model.eval()
    bounds = model.linf_logit_bounds()
    correct = torch.zeros((), dtype=torch.int64, device=split.labels.device)
    certified = torch.zeros_like(correct)
    for start in range(0, len(split), batch_size):
        x, y = split.images[start : start + batch_size], split.labels[start : start + batch_size]
        logits = model(x)
        correct += (logits.argmax(dim=1) == y).sum()
        certified += certified_linf_global(logits, y, bounds, eps).sum()
    model.train(was_training)
    n = len(split)
    return Accuracy(100.0 * correct.item() / n, 100.0 * certified.item() / n)


def parse_args(argv: list[str] | None = None):
    parser = cli.Parser(description="Certify a saved Lipschitz MLP on the MNIST test set.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint from train_mnist.py or the original demo")
    parser.add_argument("--cert_magnitude", "--cert-magnitude", type=cli.nonnegative_float, default=0.1,
                        help="L-inf radius in pixel units (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder holding MNIST/raw (default: %(default)s)")
    cli.add_architecture_flags(parser, defaults=False)
    cli.add_device_flags(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = cli.pick_device(args.device, args.no_cuda)
    checkpoint = load_checkpoint(args.checkpoint, args.activation, args.group_size, args.hidden)
    (test,) = load_mnist(args.data_dir, splits=("test",))
    print(evaluate(checkpoint.model.to(device), test.to(device), args.cert_magnitude).lines())


if __name__ == "__main__":
    cli.run(main)
