"""Time one training step of a recipe and of its variants.

The variants are alternated round by round in one process, since the machine's speed drifts by
15 % and more over minutes.

    python scripts/bench_step.py --data-dir ../shared/mnist     # ibp-wide, 2 threads unless OMP_NUM_THREADS says
    python scripts/bench_step.py --data-dir ../shared/mnist --recipe ibp-gs50 --rounds 7 --steps 60

Variants: the recipe as it is, with --precision bfloat16, with --batch-norm, and the demo's
objective (`--loss ce`) on the same network, the unit the other steps are measured in. Each round
times `--steps` steps of every variant as a training epoch takes them (`training.train_epoch`:
shuffled MNIST batches), after the ramp, at the recipe's full radius. Prints the median over rounds
of the milliseconds per step; `--json FILE` also writes them, with the command, machine and date.
`--profile` then runs `--steps` steps of each variant under `torch.profiler` and adds where a step's
time goes: the operators' own CPU time (the profiler's self time) summed in `GROUPS`, as shares of all.

    OMP_NUM_THREADS=2 python scripts/bench_step.py --data-dir ../shared/mnist --recipe cnn-ibp --json results/steps/cnn-ibp.json
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cli  # noqa: E402
from checkpoints import write_json  # noqa: E402
from errors import ConfigError  # noqa: E402
from mnist_data import Split, load_mnist  # noqa: E402
from training import Recipe, Run, recipe_path, train_epoch  # noqa: E402

VARIANTS = {
    "the recipe": {},
    "--precision bfloat16": {"precision": "bfloat16"},
    "--batch-norm": {"batch_norm": True},
    "--loss ce (the demo's objective)": {"loss": "ce"},
}


GROUPS = {  # the operators whose own time each group sums; the profiler's names, forward and backward
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution",
                        "aten::convolution_backward"),
    "sorts": ("aten::sort",),
}


def step_milliseconds(run: Run, train: Split, steps: int) -> float:
    train_epoch(run, train, max_batches=3)  # warm-up: allocations, first-call dispatch
    start = time.perf_counter()
    train_epoch(run, train, max_batches=steps)
    return (time.perf_counter() - start) / steps * 1000


def time_shares(run: Run, train: Split, steps: int) -> dict[str, float]:
    """Per group of `GROUPS`, and for the other operators, the percentage of the operators' own CPU time over
    `steps` profiled steps (the profiler's overhead inflates the many small operators of the rest)."""
    train_epoch(run, train, max_batches=3)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        train_epoch(run, train, max_batches=steps)
    own = {event.key: event.self_cpu_time_total for event in profiler.key_averages()}
    total = sum(own.values())
    shares = {group: 100 * sum(own.get(name, 0) for name in names) / total for group, names in GROUPS.items()}
    return {**shares, "other": 100 - sum(shares.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ibp-wide", help="recipe name or JSON file (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing every variant (default: 5)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant and round (default: 40)")
    parser.add_argument("--json", type=Path, help="also write the medians to this JSON file")
    parser.add_argument("--profile", action="store_true",
                        help="then profile each variant: the shares of matrix products, sorts and the rest")
    cli.add_data_flag(parser)
    args = parser.parse_args()
    if args.json is not None:
        cli.check_output_file(args.json, "--json")
    recipe = Recipe.build(recipe_path(args.recipe))
    train, = load_mnist(args.data_dir, ("train",), allow_download=False)
    runs, refused = {}, {}
    for name, changes in VARIANTS.items():
        try:
            runs[name] = Run.start(replace(recipe, **changes), torch.device("cpu"))
        except ConfigError as err:  # a variant the recipe's network cannot take (batch norm with convolutions)
            refused[name] = str(err)
            print(f"{name}: not timed ({err})")
    for run in runs.values():
        run.epoch = math.ceil(recipe.warmup_epochs + recipe.ramp_epochs)  # the ramp done: the full radius
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(step_milliseconds(run, train, args.steps))
    unit = statistics.median(times["--loss ce (the demo's objective)"])
    layers = ", ".join([*recipe.convs, *map(str, recipe.hidden)])
    print(f"{args.recipe}: {layers}, {recipe.activation} {recipe.group_size}, batch {recipe.batch_size}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} rounds of {args.steps} steps")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:34s} {median:7.2f} ms per step  {median / unit:5.2f} x the ce step")
    shares = {name: time_shares(run, train, args.steps) for name, run in runs.items()} if args.profile else {}
    for name, row in shares.items():
        print(f"{name:34s} " + ", ".join(f"{group} {share:.0f} %" for group, share in row.items()))
    if args.json is not None:
        write_json(args.json, {**cli.provenance("scripts/bench_step.py"), "recipe": args.recipe, "layers": layers,
                               "batch_size": recipe.batch_size, "rounds": args.rounds, "steps": args.steps,
                               "milliseconds_per_step": {name: statistics.median(v) for name, v in times.items()},
                               "rounds_milliseconds": times, "not_timed": refused,
                               **({"time_shares": shares} if args.profile else {})})


if __name__ == "__main__":
    main()
