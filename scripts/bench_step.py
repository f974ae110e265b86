"""Time one training step of a recipe and of its variants.

The variants are alternated round by round in one process, since the machine's speed drifts by
15 % and more over minutes.

    python scripts/bench_step.py                              # ibp-wide, 2 threads unless OMP_NUM_THREADS says
    python scripts/bench_step.py --recipe ibp-gs50 --rounds 7 --steps 40

Variants: the recipe as it is, with --precision bfloat16, with --batch-norm, and the demo's
objective (`--loss ce`) on the same network, the unit the other steps are measured in. Each step
trains at the recipe's full radius on a fixed batch of uniform random pixels: the arithmetic, and
so the time, does not depend on the pixels. Prints the median over rounds of the milliseconds per
step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from objectives import Schedule  # noqa: E402
from training import Recipe, Run, recipe_path, train_step  # noqa: E402

VARIANTS = {
    "the recipe": {},
    "--precision bfloat16": {"precision": "bfloat16"},
    "--batch-norm": {"batch_norm": True},
    "--loss ce (the demo's objective)": {"loss": "ce"},
}


def step_milliseconds(run: Run, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    schedule = Schedule(run.recipe.eps, run.recipe.final_clean_weight)
    for _ in range(3):  # warm-up: allocations, first-call dispatch
        train_step(run, x, y, schedule)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(run, x, y, schedule)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="ibp-wide", help="recipe name or JSON file (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each timing every variant (default: 5)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant and round (default: 30)")
    args = parser.parse_args()
    recipe = Recipe.build(recipe_path(args.recipe))
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(recipe.batch_size, 784, generator=generator)
    y = torch.randint(0, 10, (recipe.batch_size,), generator=generator)
    runs = {name: Run.start(replace(recipe, **changes), torch.device("cpu")) for name, changes in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            times[name].append(step_milliseconds(run, x, y, args.steps))
    unit = statistics.median(times["--loss ce (the demo's objective)"])
    print(f"{args.recipe}: {recipe.hidden} GroupSort {recipe.group_size}, batch {recipe.batch_size}, "
          f"{torch.get_num_threads()} threads; median of {args.rounds} rounds of {args.steps} steps")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:34s} {median:7.2f} ms per step  {median / unit:5.2f} x the ce step")


if __name__ == "__main__":
    main()
