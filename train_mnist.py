"""Train a GroupSort (or ReLU) MLP on MNIST with a layer-wise Lipschitz penalty, then certify it.

    python train_mnist.py                                            # GroupSort, the demo
    python train_mnist.py --activation relu --save-fn mnist_relu.p   # the ReLU baseline

Reproduces the demo of Cohen, Cohen & Huster, "Universal Lipschitz Approximation in
Bounded Depth Neural Networks" (arXiv:1904.04861); the defaults are the demo's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import cli
import lipschitz
from certify import METHODS, Accuracy, certified_linf_global, evaluate
from mnist_data import Split, load_mnist
from models import LipschitzMLP, MLPConfig, atomic_write, save_checkpoint
from objectives import LOSSES, LossFn, Schedule, batch_loss

DRY_RUN_BATCHES = 3
TRAINING_STATE_FORMAT = "lipschitz-mlp-training/1"
# What a resumed run must share with the run it continues (the epoch count may grow).
RECIPE = ("batch_size", "lr", "gamma", "lc_penalty", "norm", "cert_magnitude", "loss", "train_eps", "ramp_epochs",
          "hinge_margin", "constraint", "constraint_radius", "seed")


class NonFiniteError(cli.Failure):
    """The loss or a bound became NaN or infinite."""

    status = 3


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
    parser.add_argument("--loss", choices=LOSSES, default="ce",
                        help="training objective, see objectives.py (default: %(default)s, the demo's)")
    parser.add_argument("--train-eps", type=cli.nonnegative_float, default=None,
                        help="radius the lmt, hinge and ibp losses train at (default: --cert_magnitude)")
    parser.add_argument("--ramp-epochs", type=cli.nonnegative_float, default=0.0,
                        help="ramp the training radius up from 0 over this many epochs (default: %(default)s)")
    parser.add_argument("--hinge-margin", type=cli.positive_float, default=1.0,
                        help="target certified margin of the hinge loss (default: %(default)s)")
    parser.add_argument("--constraint", choices=("none", "linf-proj"), default="none",
                        help="linf-proj: after every step, project each weight row onto the L1 ball, so "
                             "every layer's L-inf operator norm stays <= --constraint-radius (default: none)")
    parser.add_argument("--constraint-radius", type=cli.positive_float, default=1.0,
                        help="L1 radius of the rows under --constraint linf-proj (default: %(default)s)")
    cli.add_architecture_flags(parser, defaults=True)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="train one model per seed, one after another, and report mean ± std")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder holding MNIST/raw; downloaded there if missing (default: %(default)s)")
    parser.add_argument("--save-dir", type=Path, default=Path("outputs"),
                        help="folder for the checkpoint (default: %(default)s)")
    parser.add_argument("--save-fn", default=None,
                        help="checkpoint file name (default: mnist_<activation>.p)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from the training state saved after its last finished epoch")
    cli.add_device_flags(parser)
    parser.add_argument("--compile", action="store_true",
                        help="compile the batch loss with torch.compile (see README, Performance)")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"smoke run: {DRY_RUN_BATCHES} batches of one epoch, nothing saved")
    args = parser.parse_args(argv)
    if args.save_fn is None:
        args.save_fn = f"mnist_{args.activation}.p"
    if args.train_eps is None:
        args.train_eps = args.cert_magnitude
    if args.dry_run and args.resume:
        parser.error("--dry-run saves nothing, so it cannot be resumed: drop one of the two")
    if args.seeds and args.resume:
        parser.error("--resume continues one run: give --seed, not --seeds")
    return args


def train_step(
    model: LipschitzMLP,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    schedule: Schedule | None = None,
    loss_fn: LossFn = batch_loss,
) -> torch.Tensor:
    """One optimiser step on the objective `args.loss`; returns [loss, class loss, errors, certified].

    The logit bounds in `args.norm` are computed once and serve both the penalty
    and the running count of certified examples (the global rule; in L2 the
    penalty's power-iteration bounds make that count an estimate). Nothing
    leaves the device, so a step never waits on it. Without a schedule the
    loss trains at the full --train-eps. `loss_fn` is `batch_loss` or its
    torch.compile'd form.
    """
    schedule = schedule or Schedule.at(1.0, args.train_eps, 0.0)
    loss, class_loss, logits, bounds = loss_fn(model, x, y, args.loss, args.norm, args.lc_penalty,
                                               schedule, args.hinge_margin)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if args.constraint == "linf-proj":
        for layer in model.linear_layers():
            lipschitz.project_rows_l1_ball_(layer.weight, args.constraint_radius)
    with torch.no_grad():
        errors = (logits.argmax(dim=1) != y).sum()
        certified = certified_linf_global(logits, y, bounds, args.cert_magnitude).sum()
        return torch.stack([loss, class_loss, errors, certified])


@dataclass(frozen=True)
class EpochStats:
    """Means over one epoch: loss and class loss per batch, error rates per example."""

    loss: float
    class_loss: float
    error: float
    cert_error: float
    max_bound: float  # max_k L_k after the epoch's last step


def train_epoch(
    model: LipschitzMLP,
    optimizer: torch.optim.Optimizer,
    train: Split,
    args: argparse.Namespace,
    generator: torch.Generator,
    epoch: int = 0,
    loss_fn: LossFn = batch_loss,
) -> EpochStats:
    """One shuffled pass over `train` after `epoch` finished epochs; statistics are read back once, at the end."""
    model.train()
    order = torch.randperm(len(train), generator=generator, device=train.labels.device)
    batches = order.split(args.batch_size)
    if args.dry_run:
        batches = batches[:DRY_RUN_BATCHES]
    totals = torch.zeros(4, device=train.labels.device)
    for number, index in enumerate(batches):
        schedule = Schedule.at(epoch + number / len(batches), args.train_eps, args.ramp_epochs)
        totals += train_step(model, optimizer, train.images[index], train.labels[index], args, schedule, loss_fn)
    with torch.no_grad():
        max_bound = model.lp_logit_bounds(args.norm).max()
    loss_sum, class_sum, errors, certified, max_bound = torch.cat([totals, max_bound[None]]).tolist()
    seen = sum(len(index) for index in batches)
    return EpochStats(loss_sum / len(batches), class_sum / len(batches), errors / seen,
                      1 - certified / seen, max_bound)


@dataclass
class Run:
    """Everything a training run carries from one epoch to the next."""

    model: LipschitzMLP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    loss_fn: LossFn = batch_loss
    epoch: int = 0
    epoch_seconds: list[float] = field(default_factory=list)


def model_config(args: argparse.Namespace) -> MLPConfig:
    return MLPConfig(hidden=args.hidden, activation=args.activation, group_size=args.group_size)


def new_run(args: argparse.Namespace, seed: int, device: torch.device) -> Run:
    torch.manual_seed(seed)
    model = LipschitzMLP(model_config(args)).to(device)
    # fused: one kernel for all parameters; the step is a large share of this small model's time
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.gamma)
    loss_fn = compiled(batch_loss) if args.compile else batch_loss
    return Run(model, optimizer, scheduler, torch.Generator(device=device).manual_seed(seed), loss_fn)


def compiled(loss_fn: LossFn) -> LossFn:
    """`loss_fn` under torch.compile; a failure to compile stops the run with one line."""
    fast = torch.compile(loss_fn)

    def call(*args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            return fast(*args)
        except torch._dynamo.exc.TorchDynamoException as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise cli.Failure(f"torch.compile failed ({reason}): run without --compile") from None

    return call


def training_state_path(save_path: Path) -> Path:
    """The per-epoch training state kept beside a checkpoint, for --resume."""
    return save_path.with_suffix(".last.p")


def recipe(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {**{name: getattr(args, name) for name in RECIPE}, "seed": seed}


def save_training_state(path: Path, run: Run, args: argparse.Namespace, seed: int) -> None:
    """Model, optimiser, schedule and shuffling state after `run.epoch`, written atomically."""
    state = {
        "format": TRAINING_STATE_FORMAT,
        "config": run.model.config.to_dict(),
        "recipe": recipe(args, seed),
        "epoch": run.epoch,
        "epoch_seconds": run.epoch_seconds,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "generator": run.generator.get_state(),
    }
    atomic_write(path, lambda stream: torch.save(state, stream))


def resume(run: Run, path: Path, args: argparse.Namespace, seed: int) -> None:
    """Restore `run` from the training state at `path`, refusing one from a different run."""
    try:
        state = torch.load(path, map_location=run.model.layers[0].weight.device, weights_only=True)
    except FileNotFoundError:
        raise cli.UsageError(f"nothing to resume: {path} does not exist") from None
    except Exception as err:  # any unpickling failure: the file is not a training state
        raise cli.UsageError(f"cannot resume from {path}: {type(err).__name__}") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise cli.UsageError(f"cannot resume from {path}: not a training state of this project")
    differences = [
        f"{name} {state['recipe'][name]} (now {value})" for name, value in recipe(args, seed).items()
        if state["recipe"].get(name) != value
    ]
    if state["config"] != run.model.config.to_dict():
        differences.append(f"architecture {state['config']}")
    if differences:
        raise cli.UsageError(f"cannot resume {path}: it was trained with " + ", ".join(differences))
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.generator.set_state(state["generator"].to(torch.uint8).cpu())
    run.epoch, run.epoch_seconds = state["epoch"], list(state["epoch_seconds"])


def ensure_writable(folder: Path) -> None:
    """Fail before training, not after it, when the checkpoint folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise cli.UsageError(f"cannot write to {folder}: {err.strerror or err}") from None


def train_one(args: argparse.Namespace, seed: int, save_path: Path, data: tuple[Split, Split],
              device: torch.device) -> Accuracy:
    """Train (or resume) one model, print its epochs and results, and save it."""
    train, test = data
    run = new_run(args, seed, device)
    state_path = training_state_path(save_path)
    if args.resume:
        resume(run, state_path, args, seed)
        print(f"resuming {state_path} after epoch {run.epoch}")
    epochs = 1 if args.dry_run else args.epochs
    try:
        while run.epoch < epochs:
            start = time.perf_counter()
            stats = train_epoch(run.model, run.optimizer, train, args, run.generator, run.epoch, run.loss_fn)
            run.scheduler.step()
            seconds = time.perf_counter() - start
            if not (math.isfinite(stats.loss) and math.isfinite(stats.max_bound)):
                kept = f"; the last good state is in {state_path}" if run.epoch else ""
                raise NonFiniteError(f"loss or logit bound is not finite in epoch {run.epoch + 1}: "
                                     f"stopped{kept} (try a smaller --lr)")
            run.epoch += 1
            run.epoch_seconds.append(seconds)
            print(
                f"epoch: {run.epoch}/{epochs}, train loss: {stats.loss:.3f}, lc: {stats.max_bound:.3f}, "
                f"class loss: {stats.class_loss:.3f}, error: {stats.error:.3f}, "
                f"cert error: {stats.cert_error:.3f}, time: {seconds:.2f}s",
                flush=True,
            )
            if not args.dry_run:
                save_training_state(state_path, run, args, seed)
    except KeyboardInterrupt:
        saved = f"epoch {run.epoch} is saved in {state_path}" if run.epoch else "no epoch finished"
        print(f"\ninterrupted: {saved}; continue with the same command and --resume", file=sys.stderr)
        sys.exit(130)

    accuracy = evaluate(run.model, test, args.cert_magnitude, method=args.method, norm=args.norm)
    print(accuracy.lines())
    if args.dry_run:
        print("dry run: nothing saved")
        return accuracy
    metrics = {
        "clean_accuracy": accuracy.clean,
        "certified_accuracy": accuracy.certified,
        "method": args.method,
        "max_logit_bound": run.model.lp_logit_bounds(args.norm).max().item(),
        "epochs": run.epoch,
        **recipe(args, seed),
        "seconds_per_epoch_median": statistics.median(run.epoch_seconds),
        "train_seconds": sum(run.epoch_seconds),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
        "compiled": args.compile,
        "torch": str(torch.__version__),
        "machine": platform.machine(),
    }
    save_checkpoint(save_path, run.model, metrics)
    print(f"saved {save_path}")
    return accuracy


def report_seeds(seeds: list[int], results: list[Accuracy], path: Path) -> None:
    """Print and save mean ± sample standard deviation over the seeds."""
    summary: dict[str, Any] = {"seeds": seeds}
    for name, label in (("clean", "acc"), ("certified", "certified")):
        values = [getattr(result, name) for result in results]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[name] = {"per_seed": values, "mean": statistics.mean(values), "std": std}
        print(f"seeds {' '.join(map(str, seeds))}: test {label} on clean examples (%): "
              f"{statistics.mean(values):.3f} ± {std:.3f}")
    atomic_write(path, lambda stream: stream.write((json.dumps(summary, indent=2) + "\n").encode()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = cli.pick_device(args.device, args.no_cuda)
    LipschitzMLP(model_config(args))  # an impossible architecture fails here, before any work
    data = tuple(split.to(device) for split in load_mnist(args.data_dir))
    if not args.dry_run:
        ensure_writable(args.save_dir)
    save_path = args.save_dir / args.save_fn
    if not args.seeds:
        train_one(args, args.seed, save_path, data, device)
        return
    results = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        seed_path = save_path.with_name(f"{save_path.stem}_seed{seed}{save_path.suffix}")
        results.append(train_one(args, seed, seed_path, data, device))
    if not args.dry_run:
        report_seeds(args.seeds, results, save_path.with_name(f"{save_path.stem}_seeds.json"))


if __name__ == "__main__":
    cli.run(main)
