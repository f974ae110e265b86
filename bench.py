"""Time an epoch of the default GroupSort training through the original demo's data path and ours.

    python bench.py --data-dir ../shared/mnist --epochs 3 --json outputs/bench.json
    python bench.py --data-dir ../shared/mnist --epochs 5 --compile --seeds 5

Every path drives the same model, loss and optimiser step (`training.train_step`):
(a) the original: torchvision `datasets.MNIST` with `ToTensor` + `Normalize`, a
    DataLoader of batch 128 with shuffling, as in the demo;
(b) ours: the whole split as one tensor, batches drawn by a shuffled permutation;
(c) with --compile, ours with the batch loss under torch.compile.
The achieved GFLOP/s are set against plain matrix multiplies of the same shapes.

--seeds N bounds what training N seeds at once, stacked into one model, could
cost per epoch at best: stacking shares the per-batch overhead, but every
seed's arithmetic is still done. The overhead is measured as the epoch time of
a model only 10 units wide; the N seeds' matrix multiplies alone are timed
with torch.bmm.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so that a busy machine does not
# slow every step many times over (docs/usage.md, Troubleshooting). It changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import gzip
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import cli
from checkpoints import write_json
from mnist_data import FILES, Split, find_file, load_mnist
from models import MLPConfig
from training import Recipe, Run, train_epoch, train_step

LABELS = {
    "original": "original DataLoader",
    "ours": "this project",
    "compiled": "this project, --compile",
    "overhead": "width-10 model",
}


def epoch_flops(config: MLPConfig, examples: int) -> int:
    """Matrix-multiply FLOPs of one training epoch: forward, weight gradients, and the input
    gradients of every layer but the first (the pixels need none)."""
    widths = (config.in_features, *config.hidden, config.out_features)
    products = [fan_in * fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:])]
    return 2 * examples * (2 * sum(products) + sum(products[1:]))


def matmul_seconds_per_epoch(
    config: MLPConfig, batch: int, examples: int, device: torch.device, stack: int = 1
) -> float:
    """The same multiplies as an epoch's training steps, alone: a floor for the epoch's time.

    With `stack` > 1, those of `stack` models at once, as batched multiplies.
    """
    widths = (config.in_features, *config.hidden, config.out_features)
    shapes = []
    for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        shapes.append(((batch, fan_in), (fan_in, fan_out)))   # forward
        shapes.append(((fan_out, batch), (batch, fan_in)))    # weight gradient
        if depth:
            shapes.append(((batch, fan_out), (fan_out, fan_in)))  # input gradient
    lead = () if stack == 1 else (stack,)
    operands = [(torch.randn(*lead, *a, device=device), torch.randn(*lead, *b, device=device)) for a, b in shapes]

    def step() -> None:
        for a, b in operands:
            a @ b

    repeats = 200
    seconds = timed(lambda: [step() for _ in range(repeats)], device) / repeats
    return seconds * -(-examples // batch)


def seeds_bound(count: int, one_seed: float, overhead: float, matmuls: float) -> dict[str, float]:
    """The best epoch time of `count` stacked seeds: the overhead paid once, the rest once per seed."""
    bound = overhead + count * (one_seed - overhead)
    print(f"{count} seeds at once, at best: {overhead:.2f} s shared + {count} x {one_seed - overhead:.2f} s "
          f"= {bound:.2f} s/epoch, {bound / one_seed:.2f}x one seed")
    print(f"{count} seeds' matrix multiplies alone (torch.bmm): {matmuls:.2f} s/epoch, "
          f"{matmuls / one_seed:.2f}x one seed's whole epoch")
    return {"count": count, "overhead_seconds_per_epoch": overhead, "lower_bound_seconds_per_epoch": bound,
            "lower_bound_ratio": bound / one_seed, "matmul_only_seconds_per_epoch": matmuls,
            "matmul_only_ratio": matmuls / one_seed}


def timed(work: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def original_epoch(data_dir: Path, recipe: Recipe, workdir: Path, device: torch.device) -> Callable[[], None]:
    """One epoch of the default training fed by the original demo's DataLoader."""
    loader = original_loader(data_dir, recipe.batch_size, workdir)
    # The loader normalises, so this model does not (mean 0): the same function.
    run = Run.start(recipe, device, config=MLPConfig(mean=0.0))

    def epoch() -> None:
        for x, y in loader:
            train_step(run, x.to(device), y.to(device))

    return epoch


def project_epoch(train: Split, recipe: Recipe, device: torch.device, compile: bool = False) -> Callable[[], None]:
    """One epoch of `recipe` through this project's path: the split in memory, a shuffled permutation."""
    run = Run.start(recipe, device, compile)
    return lambda: train_epoch(run, train)


def original_loader(data_dir: Path, batch_size: int, workdir: Path) -> DataLoader:
    """The demo's loader, over uncompressed copies of the files (torchvision reads no .gz)."""
    raw = workdir / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (name for pair in FILES.values() for name in pair):
        source = find_file(data_dir, name)
        if source is None:
            raise cli.UsageError(f"{name} not found under {data_dir}")
        content = source.read_bytes()
        (raw / name).write_bytes(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (1,))])
    dataset = datasets.MNIST(str(workdir), train=True, transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0)


def time_paths(options: argparse.Namespace, recipe: Recipe, train: Split, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each timed epoch, per path: original, ours, and with the options compiled and overhead."""
    with tempfile.TemporaryDirectory() as workdir:
        epochs = {"original": original_epoch(options.data_dir, recipe, Path(workdir), device),
                  "ours": project_epoch(train, recipe, device)}
        if options.compile:
            epochs["compiled"] = project_epoch(train, recipe, device, compile=True)
        if options.seeds > 1:
            epochs["overhead"] = project_epoch(train, replace(recipe, hidden=(10,)), device)
        seconds: dict[str, list[float]] = {path: [] for path in epochs}
        # One path after another: alternating them epoch by epoch slowed this project's
        # epochs by about 10 % on the 2-core CPU.
        for path, epoch in epochs.items():
            for _ in range(options.epochs):
                seconds[path].append(timed(epoch, device))
                print(f"{LABELS[path]}: {seconds[path][-1]:.2f} s/epoch", flush=True)
    return seconds


def summary(seconds: dict[str, list[float]], config: MLPConfig, batch: int, examples: int,
            device: torch.device) -> dict[str, object]:
    """Medians, speed-up and GFLOP/s of the timed paths, set against the matrix multiplies alone; printed too."""
    flops = epoch_flops(config, examples)
    floor = matmul_seconds_per_epoch(config, batch, examples, device)
    median = {path: statistics.median(values) for path, values in seconds.items()}
    result = {
        **cli.provenance("bench.py"),  # the command, threads, machine, torch and date
        **({} if device.type == "cpu" else {"machine": torch.cuda.get_device_name(device)}),
        "device": str(device),
        "epochs_timed": len(seconds["ours"]),
        "seconds_per_epoch": seconds,
        "median_seconds_per_epoch": median,
        "speedup": median["original"] / median["ours"],
        "gflop_per_epoch": flops / 1e9,
        "gflops_achieved": {path: flops / 1e9 / value for path, value in median.items() if path != "overhead"},
        "matmul_only_seconds_per_epoch": floor,
        "matmul_gflops": flops / 1e9 / floor,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(f"\n{'path':<24} {'s/epoch':>8} {'GFLOP/s':>8}")
    for path, value in result["gflops_achieved"].items():
        print(f"{LABELS[path]:<24} {median[path]:>8.2f} {value:>8.1f}")
    print(f"{'matmuls alone':<24} {floor:>8.2f} {result['matmul_gflops']:>8.1f}")
    print(f"speed-up: {result['speedup']:.2f}x; {flops / 1e9:.0f} GFLOP per epoch; {result['machine']}")
    return result


def main() -> None:
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    cli.add_data_flag(parser)
    parser.add_argument("--epochs", type=cli.positive_int, default=3, help="timed epochs per path")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--compile", action="store_true", help="also time this project's path with --compile")
    parser.add_argument("--seeds", type=cli.positive_int, default=1,
                        help="also bound the epoch time of this many seeds trained at once (default: 1, no bound)")
    cli.add_device_flags(parser)
    options = parser.parse_args()
    if options.json is not None:
        cli.check_output_file(options.json, "--json")
    device = cli.pick_device(options.device, options.no_cuda)
    recipe = Recipe()  # the demo's
    config = recipe.model_config()
    (train,) = load_mnist(options.data_dir, splits=("train",))
    train = train.to(device)
    result = summary(time_paths(options, recipe, train, device), config, recipe.batch_size, len(train), device)
    if options.seeds > 1:
        median = result["median_seconds_per_epoch"]
        stacked = matmul_seconds_per_epoch(config, recipe.batch_size, len(train), device, stack=options.seeds)
        result["seeds"] = seeds_bound(options.seeds, median["ours"], median["overhead"], stacked)
    if options.json:
        write_json(options.json, result)


if __name__ == "__main__":
    cli.run(main)
