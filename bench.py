"""Time an epoch of the default GroupSort training through the original demo's data path and ours.

    python bench.py --data-dir ../shared/mnist --epochs 3 --json bench.json

Both paths drive the same model, loss and optimiser step (`train_mnist.train_step`):
(a) the original: torchvision `datasets.MNIST` with `ToTensor` + `Normalize`, a
    DataLoader of batch 128 with shuffling, as in the demo;
(b) ours: the whole split as one tensor, batches drawn by a shuffled permutation.
The achieved GFLOP/s are set against plain matrix multiplies of the same shapes.
"""

from __future__ import annotations

import gzip
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

import cli
import train_mnist
from mnist_data import FILES, find_file, load_mnist
from models import LipschitzMLP, MLPConfig, atomic_write


def epoch_flops(config: MLPConfig, examples: int) -> int:
    """Matrix-multiply FLOPs of one training epoch: forward, weight gradients, and the input
    gradients of every layer but the first (the pixels need none)."""
    widths = (config.in_features, *config.hidden, config.out_features)
    products = [fan_in * fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:])]
    return 2 * examples * (2 * sum(products) + sum(products[1:]))


def matmul_seconds_per_epoch(config: MLPConfig, batch: int, examples: int, device: torch.device) -> float:
    """The same multiplies as an epoch's training steps, alone: a floor for the epoch's time."""
    widths = (config.in_features, *config.hidden, config.out_features)
    shapes = []
    for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        shapes.append(((batch, fan_in), (fan_in, fan_out)))   # forward
        shapes.append(((fan_out, batch), (batch, fan_in)))    # weight gradient
        if depth:
            shapes.append(((batch, fan_out), (fan_out, fan_in)))  # input gradient
    operands = [(torch.randn(a, device=device), torch.randn(b, device=device)) for a, b in shapes]

    def step() -> None:
        for a, b in operands:
            a @ b

    repeats = 200
    seconds = timed(lambda: [step() for _ in range(repeats)], device) / repeats
    return seconds * -(-examples // batch)


def timed(work: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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


def main() -> None:
    parser = cli.Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="folder holding MNIST/raw")
    parser.add_argument("--epochs", type=cli.positive_int, default=3, help="timed epochs per path")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    cli.add_device_flags(parser)
    options = parser.parse_args()
    device = cli.pick_device(options.device, options.no_cuda)
    args = train_mnist.parse_args([])  # the default recipe
    config = MLPConfig()

    (train,) = load_mnist(options.data_dir, splits=("train",))
    train = train.to(device)
    seconds: dict[str, list[float]] = {"original": [], "ours": []}

    with tempfile.TemporaryDirectory() as workdir:
        loader = original_loader(options.data_dir, args.batch_size, Path(workdir))
        # The loader normalises, so this model does not (mean 0): the same function.
        torch.manual_seed(0)
        model = LipschitzMLP(MLPConfig(mean=0.0)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)

        def original_epoch() -> None:
            for x, y in loader:
                train_mnist.train_step(model, optimizer, x.to(device), y.to(device), args)

        for _ in range(options.epochs):
            seconds["original"].append(timed(original_epoch, device))
            print(f"original data path: {seconds['original'][-1]:.2f} s/epoch", flush=True)

    run = train_mnist.new_run(args, 0, device)
    for _ in range(options.epochs):
        seconds["ours"].append(timed(lambda: train_mnist.train_epoch(
            run.model, run.optimizer, train, args, run.generator), device))
        print(f"this project's path: {seconds['ours'][-1]:.2f} s/epoch", flush=True)

    flops = epoch_flops(config, len(train))
    floor = matmul_seconds_per_epoch(config, args.batch_size, len(train), device)
    median = {path: statistics.median(values) for path, values in seconds.items()}
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads" if device.type == "cpu"
        else torch.cuda.get_device_name(device),
        "device": str(device),
        "torch": str(torch.__version__),
        "epochs_timed": options.epochs,
        "seconds_per_epoch": seconds,
        "median_seconds_per_epoch": median,
        "speedup": median["original"] / median["ours"],
        "gflop_per_epoch": flops / 1e9,
        "gflops_achieved": {path: flops / 1e9 / value for path, value in median.items()},
        "matmul_only_seconds_per_epoch": floor,
        "matmul_gflops": flops / 1e9 / floor,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(f"\n{'path':<22} {'s/epoch':>8} {'GFLOP/s':>8}")
    for path, label in (("original", "original DataLoader"), ("ours", "this project")):
        print(f"{label:<22} {median[path]:>8.2f} {result['gflops_achieved'][path]:>8.1f}")
    print(f"{'matmuls alone':<22} {floor:>8.2f} {result['matmul_gflops']:>8.1f}")
    print(f"speed-up: {result['speedup']:.2f}x; {flops / 1e9:.0f} GFLOP per epoch; {result['machine']}")
    if options.json:
        text = json.dumps(result, indent=2) + "\n"
        atomic_write(options.json, lambda stream: stream.write(text.encode()))


if __name__ == "__main__":
    cli.run(main)
