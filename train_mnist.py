"""Train a GroupSort (or ReLU) MLP on MNIST with a layer-wise Lipschitz penalty, then certify it.

    python train_mnist.py                                            # GroupSort, the demo
    python train_mnist.py --activation relu --save-fn mnist_relu.p   # the ReLU baseline
    python train_mnist.py --recipe ibp-gs50                          # a recipe from recipes/

Reproduces the demo of Cohen, Cohen & Huster, "Universal Lipschitz Approximation in
Bounded Depth Neural Networks" (arXiv:1904.04861); the defaults are the demo's.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so that a busy machine does not
# slow every step many times over (docs/usage.md, Troubleshooting). It changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import math
import platform
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import certificates
import measure
import checkpoints
import cli
from certificates import Accuracy
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, Split, load_mnist
from models import LipschitzMLP
from training import NonFiniteError, Recipe, Run, recipe_path, train_epoch

DRY_RUN_BATCHES = 3
ADAM_LR_RANGE = (1e-6, 1.0)  # learning rates outside it train nothing useful, or diverge: a warning


def parse_args(argv: list[str] | None = None) -> tuple[Recipe, argparse.Namespace]:
    """The recipe (defaults, then --recipe's file, then the recipe flags given) and the run's options.

    The recipe flags come from the settings declared in `training.Recipe`, one per field.
    """
    parser = cli.Parser(description="Lipschitz-certified MNIST MLP (GroupSort or ReLU).")
    recipe = parser.add_argument_group("recipe (defaults: the original demo's)")
    recipe.add_argument("--recipe", default=None, metavar="NAME",
                        help="start from recipes/NAME.json (or a JSON file); the flags below override it")
    cli.add_recipe_flags(recipe, Recipe)
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="train one model per seed, one after another, and report mean ± std")
    cli.add_data_flag(parser)
    parser.add_argument("--save-dir", type=Path, default=Path("outputs"),
                        help="folder for the checkpoint (default: %(default)s)")
    parser.add_argument("--save-fn", default=None,
                        help="checkpoint file name (default: mnist_<recipe>.p with --recipe, else mnist_<activation>.p)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run from the training state saved after its last finished epoch")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh even where an earlier run left its training state")
    cli.add_device_flags(parser)
    parser.add_argument("--compile", action="store_true",
                        help="compile the batch loss with torch.compile (see docs/usage.md)")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"smoke run: {DRY_RUN_BATCHES} batches of one epoch, nothing saved")
    args = parser.parse_args(argv)
    if args.dry_run and args.resume:
        parser.error("--dry-run saves nothing, so it cannot be resumed: drop one of the two")
    if args.seeds and args.resume:
        parser.error("--resume continues one run: give --seed, not --seeds")
    if args.resume and args.overwrite:
        parser.error("--resume continues the saved run and --overwrite replaces it: drop one of the two")
    file = None if args.recipe is None else recipe_path(args.recipe)
    built = Recipe.build(file, **cli.recipe_overrides(args, Recipe))
    if args.save_fn is None:
        args.save_fn = f"mnist_{built.activation if file is None else file.stem}.p"
    return built, args


def print_epoch(run: Run, epochs: int, stats: Any, seconds: float) -> None:
    print(f"epoch: {run.epoch}/{epochs}, train loss: {stats.loss:.3f}, lc: {stats.max_logit_bound:.3f}, "
          f"class loss: {stats.class_loss:.3f}, error: {stats.error:.3f}, "
          f"cert error: {stats.cert_error:.3f}, time: {seconds:.2f}s", flush=True)


def train_epochs(run: Run, train: Split, state_path: Path, dry_run: bool) -> None:
    """Train up to the recipe's epochs, saving the training state after each (unless a dry run)."""
    epochs = 1 if dry_run else run.recipe.epochs
    while run.epoch < epochs:
        start = time.perf_counter()
        stats = train_epoch(run, train, DRY_RUN_BATCHES if dry_run else None)
        run.scheduler.step()
        seconds = time.perf_counter() - start
        if not (math.isfinite(stats.loss) and math.isfinite(stats.max_logit_bound)):
            kept = f"; the last good state is in {state_path}" if run.epoch else ""
            raise NonFiniteError(f"loss or logit bound is not finite in epoch {run.epoch + 1}: "
                                 f"stopped{kept} (try a smaller --lr)")
        run.epoch += 1
        run.epoch_seconds.append(seconds)
        print_epoch(run, epochs, stats, seconds)
        if not dry_run:
            checkpoints.save_training_state(state_path, run.state())


def metrics(run: Run, accuracy: Accuracy, device: torch.device, compiled: bool) -> dict[str, Any]:
    """What the checkpoint records beside the weights: results, recipe, timings, environment."""
    return {
        "clean_accuracy": accuracy.clean,
        "certified_accuracy": accuracy.certified,
        "max_logit_bound": run.network().logit_bounds(run.recipe.norm).per_logit.max().item(),
        **run.recipe.to_dict(),
        "seconds_per_epoch_median": statistics.median(run.epoch_seconds),
        "train_seconds": sum(run.epoch_seconds),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
        "compiled": compiled,
        "torch": str(torch.__version__),
        "machine": platform.machine(),
    }


def train_one(recipe: Recipe, args: argparse.Namespace, save_path: Path, data: tuple[Split, Split],
              device: torch.device) -> Accuracy:
    """Train (or resume) one model, print its epochs and results, and save it."""
    train, test = data
    run = Run.start(recipe, device, args.compile)
    state_path = checkpoints.training_state_path(save_path)
    if args.resume:
        run.restore(checkpoints.load_training_state(state_path, recipe.to_dict(), device, Recipe().to_dict()))
        print(f"resuming {state_path} after epoch {run.epoch}")
    try:
        train_epochs(run, train, state_path, args.dry_run)
    except (KeyboardInterrupt, cli.Stopped) as stop:
        saved = f"epoch {run.epoch} is saved in {state_path}" if run.epoch else "no epoch finished"
        print(f"\ninterrupted: {saved}; continue with the same command and --resume", file=sys.stderr)
        sys.exit(getattr(stop, "status", 130))
    network = run.network()
    accuracy = measure.evaluate(network, test, Ball(recipe.norm, recipe.cert_magnitude, PIXEL_RANGE),
                                     recipe.method)
    print(accuracy.lines())
    chance = 100 / network.config.out_features
    if accuracy.clean < 2 * chance and not args.dry_run:  # a dry run trains a few batches only
        print(f"warning: {accuracy.clean:.2f} % clean is near chance ({chance:.0f} %): the training did not work; "
              f"check --lr ({recipe.lr:g}) and the other recipe flags", file=sys.stderr)
    if args.dry_run:
        print("dry run: nothing saved")
        return accuracy
    checkpoints.save_checkpoint(save_path, network, metrics(run, accuracy, device, args.compile))
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
    checkpoints.write_json(path, summary)


def check_outputs(args: argparse.Namespace, save_paths: list[Path]) -> None:
    """Refuse, before any work and without creating anything, outputs that cannot be written or would
    silently replace an earlier run's training state; with --resume, require that state."""
    if not args.save_fn or Path(args.save_fn).name != args.save_fn or args.save_fn in (".", ".."):
        raise cli.UsageError(f"--save-fn must be a file name (no folder; see --save-dir), got {args.save_fn!r}")
    for path in save_paths:
        cli.check_output_file(path, "--save-dir/--save-fn")
        state = checkpoints.training_state_path(path)
        if args.resume and not state.exists():
            raise cli.UsageError(f"nothing to resume: {state} does not exist")
        if state.exists() and not (args.resume or args.overwrite or args.dry_run):
            raise cli.UsageError(f"{state} holds the training state of an earlier run: continue it with --resume "
                                 f"(a larger --epochs extends a finished run), or start afresh with --overwrite")


def check_architecture(recipe: Recipe) -> None:
    """Build the network once, before any work: an impossible architecture, or one too large for this machine's
    memory, fails here in one line."""
    config = recipe.model_config()
    try:
        LipschitzMLP(config)
    except RuntimeError as err:
        if "allocate" not in str(err):
            raise
        widths = ", ".join(str(w) for w in (config.in_features, *config.hidden, config.out_features))
        raise cli.UsageError(f"a network of widths {widths} does not fit in this machine's memory") from None


def seed_paths(args: argparse.Namespace) -> list[Path]:
    """The checkpoint of each run: one, or one per seed of --seeds."""
    path = args.save_dir / args.save_fn
    if not args.seeds:
        return [path]
    return [path.with_name(f"{path.stem}_seed{seed}{path.suffix}") for seed in args.seeds]


def main(argv: list[str] | None = None) -> None:
    recipe, args = parse_args(argv)
    cli.stop_on_signals()
    device = cli.pick_device(args.device, args.no_cuda)
    check_architecture(recipe)
    if recipe.warmup_epochs + recipe.ramp_epochs > recipe.epochs and not args.dry_run:
        print(f"warning: the training radius ramps up until epoch {recipe.warmup_epochs + recipe.ramp_epochs:g}, "
              f"after --epochs {recipe.epochs}: the run ends below its training radius", file=sys.stderr)
    if not ADAM_LR_RANGE[0] <= recipe.lr <= ADAM_LR_RANGE[1]:
        print(f"warning: --lr {recipe.lr:g} is far outside Adam's useful range ({ADAM_LR_RANGE[0]:g} to "
              f"{ADAM_LR_RANGE[1]:g}); the run goes on", file=sys.stderr)
    paths = seed_paths(args)
    check_outputs(args, paths)
    data = tuple(split.to(device) for split in load_mnist(args.data_dir))
    if not args.seeds:
        train_one(recipe, args, paths[0], data, device)
        return
    results = []
    for seed, path in zip(args.seeds, paths):
        print(f"seed {seed}", flush=True)
        results.append(train_one(replace(recipe, seed=seed), args, path, data, device))
    if not args.dry_run:
        save_path = args.save_dir / args.save_fn
        report_seeds(args.seeds, results, save_path.with_name(f"{save_path.stem}_seeds.json"))


if __name__ == "__main__":
    cli.run(main)
