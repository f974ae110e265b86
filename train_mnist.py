"""Train a GroupSort (or ReLU) MLP on MNIST with a layer-wise Lipschitz penalty, then certify it.

    python train_mnist.py                                            # GroupSort, the demo
    python train_mnist.py --activation relu --save-fn mnist_relu.p   # the ReLU baseline

Reproduces the demo of Cohen, Cohen & Huster, "Universal Lipschitz Approximation in
Bounded Depth Neural Networks" (arXiv:1904.04861); the defaults are the demo's.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import cli
import lipschitz
from certify import METHODS, certified_linf_global, evaluate
from mnist_data import Split, load_mnist
from models import LipschitzMLP, MLPConfig, save_checkpoint

DRY_RUN_BATCHES = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.Parser(description="Lipschitz-certified MNIST MLP (GroupSort or ReLU).")
    parser.add_argument("--batch-size", type=cli.positive_int, default=128,
                        help="training batch size (default: %(default)s)")
    parser.add_argument("--lr", type=cli.positive_float, default=1e-3,
                        help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--gamma", type=cli.positive_float, default=0.985,
                        help="learning-rate decay per epoch (default: %(default)s)")
    parser.add_argument("--epochs", type=cli.positive_int, default=100,
                        help="training epochs (default: %(default)s)")
    parser.add_argument("--lc_penalty", "--lc-penalty", type=cli.nonnegative_float, default=0.01,
                        help="weight of the soft-max logit-bound penalty (default: %(default)s)")
    parser.add_argument("--cert_magnitude", "--cert-magnitude", type=cli.nonnegative_float, default=0.1,
                        help="radius of the certificate in --norm, pixel units (default: %(default)s)")
    parser.add_argument("--norm", choices=lipschitz.NORMS, default="linf",
                        help="input norm of the penalised bound and of the certificate (default: %(default)s)")
    parser.add_argument("--method", choices=METHODS, default="global",
                        help="certificate rule of the final report, see certify.py (default: %(default)s)")
    cli.add_architecture_flags(parser, defaults=True)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder holding MNIST/raw; downloaded there if missing (default: %(default)s)")
    parser.add_argument("--save-dir", type=Path, default=Path("outputs"),
                        help="folder for the checkpoint (default: %(default)s)")
    parser.add_argument("--save-fn", default=None,
                        help="checkpoint file name (default: mnist_<activation>.p)")
    cli.add_device_flags(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help=f"smoke run: {DRY_RUN_BATCHES} batches of one epoch, nothing saved")
    args = parser.parse_args(argv)
    if args.save_fn is None:
        args.save_fn = f"mnist_{args.activation}.p"
    return args


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch: loss and class loss per batch, error rates per example."""

    loss: float
    class_loss: float
    error: float
    cert_error: float
    max_bound: float


def train_epoch(
    model: LipschitzMLP,
    optimizer: torch.optim.Optimizer,
    train: Split,
    args: argparse.Namespace,
    generator: torch.Generator,
) -> EpochStats:
    """One shuffled pass over `train`; statistics stay on the device until the end."""
    model.train()
    order = torch.randperm(len(train), generator=generator, device=train.labels.device)
    batches = order.split(args.batch_size)
    if args.dry_run:
        batches = batches[:DRY_RUN_BATCHES]
    # Running sums of loss, class loss, errors and certified examples.
    totals = torch.zeros(4, device=train.labels.device)
    for index in batches:
        x, y = train.images[index], train.labels[index]
        logits = model(x)
        class_loss = F.cross_entropy(logits, y)
        bounds = model.lp_penalty_bounds(args.norm)
        loss = class_loss + args.lc_penalty * lipschitz.soft_max_penalty(bounds)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            errors = (logits.argmax(dim=1) != y).sum()
            certified = certified_linf_global(logits, y, bounds, args.cert_magnitude).sum()
            totals += torch.stack([loss, class_loss, errors, certified])
    loss_sum, class_sum, errors, certified = totals.tolist()
    seen = sum(len(index) for index in batches)
    return EpochStats(
        loss=loss_sum / len(batches),
        class_loss=class_sum / len(batches),
        error=errors / seen,
        cert_error=1 - certified / seen,
        max_bound=bounds.max().item(),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = cli.pick_device(args.device, args.no_cuda)
    torch.manual_seed(args.seed)
    config = MLPConfig(hidden=args.hidden, activation=args.activation, group_size=args.group_size)
    model = LipschitzMLP(config).to(device)
    save_path = args.save_dir / args.save_fn
    if not args.dry_run:
        args.save_dir.mkdir(parents=True, exist_ok=True)

    train, test = (split.to(device) for split in load_mnist(args.data_dir))
    # fused: one kernel for all parameters; the step is a large share of this small model's time
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.gamma)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    epoch_seconds = []
    epochs = 1 if args.dry_run else args.epochs
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        stats = train_epoch(model, optimizer, train, args, generator)
        scheduler.step()
        epoch_seconds.append(time.perf_counter() - start)
        print(
            f"epoch: {epoch}/{epochs}, train loss: {stats.loss:.3f}, lc: {stats.max_bound:.3f}, "
            f"class loss: {stats.class_loss:.3f}, error: {stats.error:.3f}, "
            f"cert error: {stats.cert_error:.3f}, time: {epoch_seconds[-1]:.2f}s",
            flush=True,
        )

    accuracy = evaluate(model, test, args.cert_magnitude, method=args.method, norm=args.norm)
    print(accuracy.lines())
    if args.dry_run:
        print("dry run: nothing saved")
        return
    metrics = {
        "clean_accuracy": accuracy.clean,
        "certified_accuracy": accuracy.certified,
        "cert_magnitude": args.cert_magnitude,
        "norm": args.norm,
        "method": args.method,
        "max_logit_bound": model.lp_logit_bounds(args.norm).max().item(),
        "epochs": args.epochs,
        "seed": args.seed,
        "lc_penalty": args.lc_penalty,
        "lr": args.lr,
        "gamma": args.gamma,
        "batch_size": args.batch_size,
        "seconds_per_epoch_median": statistics.median(epoch_seconds),
        "train_seconds": sum(epoch_seconds),
        "device": str(device),
        "torch": str(torch.__version__),
        "machine": platform.machine(),
    }
    save_checkpoint(save_path, model, metrics)
    print(f"saved {save_path}")


if __name__ == "__main__":
    cli.run(main)
