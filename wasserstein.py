"""Wasserstein-1 distances estimated with a 1-Lipschitz critic, and certified from below.

    python wasserstein.py --task circles                      # a built-in task; its true W1 is 1
    python wasserstein.py --samples P.npy Q.npy --json w.json  # two sample sets of shape (n, d)

By Kantorovich-Rubinstein duality, W1(P, Q) = max over 1-Lipschitz f of
E_P f - E_Q f: a critic with orthonormal layers (`orthonormal`) and GroupSort
is trained to maximise it (Anil, Lucas & Grosse 2019). Its dual value on
held-out samples is the estimate. The certified lower bound divides that value
by the critic's proved L2 Lipschitz bound, from its stored float32 weights, and
subtracts every float64 rounding error of the evaluation, so it is at most the
W1 distance between the two held-out sample sets whatever the training did.

The three tasks of the paper's code (cemanil/LNets), each with W1 = 1 exactly
between the held-out sets too (every Q point is paired with a P point at
distance 1, and no two points of P and Q are closer): `line`, {-1, +1} against
0; `circles`, unit circles around (-2, 0), (0, 0), (2, 0) against their
centres; `sphere`, the unit sphere in 128 dimensions against its centre.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import allowance
import checkpoints
import cli
import rounding
from groupsort import ACTIVATIONS, bitonic_stages
from lipschitz import Ball
from models import LipschitzMLP, MLPConfig, in_float64
from orthonormal import Bjorck, freeze_, orthonormalise_layers_, start_as_sorting_network_

EXACT_LIMIT = 4096**2  # pairs of held-out samples up to which POT's exact W1 is printed beside the estimate
Sampler = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def line(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """P: -1 or +1 with equal odds; Q: 0."""
    signs = torch.randint(0, 2, (n, 1), generator=generator, dtype=torch.float64) * 2 - 1
    return signs, torch.zeros(n, 1, dtype=torch.float64)


def circles(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """P: uniform on one of the unit circles around (-2, 0), (0, 0), (2, 0); Q: that circle's centre."""
    centres = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    q = centres[torch.randint(0, 3, (n,), generator=generator)]
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * 2 * math.pi
    return q + torch.stack([angle.cos(), angle.sin()], dim=1), q


def sphere(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """P: uniform on the unit sphere in 128 dimensions; Q: its centre."""
    g = torch.randn(n, 128, generator=generator, dtype=torch.float64)
    return g / torch.linalg.vector_norm(g, dim=1, keepdim=True), torch.zeros(n, 128, dtype=torch.float64)


@dataclass(frozen=True)
class Task:
    """A built-in task: its sampler, dimension, and its critic and training (narrower and deeper than the
    paper's code for `circles` and `sphere`, which has 3 layers of 312 and 6 of 256 units, so as to train in
    minutes on a CPU)."""

    sample: Sampler
    dim: int
    hidden: tuple[int, ...]
    activation: str
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    bjorck_iterations: int = 20


TASKS = {
    "line": Task(line, 1, (128, 128), "maxmin"),
    # 10 Bjorck iterations, not 20, buy twice the steps in the same time; the stored weights' proved norms
    # stay within 1e-6 of 1 there, and the bound divides by them whatever they are. Six layers, not three:
    # a sorting layer and the rotation after it fold the input once, and a cone's round level sets (the
    # distance to a centre, in 2 or in 128 dimensions) take many folds, so depth buys what width does not
    "circles": Task(circles, 2, (64,) * 6, "maxmin", steps=10000, batch_size=1024, lr=5e-3, bjorck_iterations=10),
    "sphere": Task(sphere, 128, (128,) * 6, "fullsort", steps=6000, lr=5e-3, bjorck_iterations=10),
}
SAMPLES = Task(line, 0, (256, 256, 256), "maxmin")  # the defaults for a user's samples (sampler and dim unused)


@dataclass(frozen=True)
class Critic:
    """How the critic is built and trained."""

    hidden: tuple[int, ...]
    activation: str
    group_size: int = 2
    bjorck: Bjorck = Bjorck()
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    start: str = "orthogonal"  # or "sorting": MaxMin layers started as a sorting network

    def build(self, dim: int) -> LipschitzMLP:
        """A fresh critic of `dim` inputs and one output, its Linear layers orthonormalised (`orthonormal`):
        drawn orthogonal, or with `start` "sorting" the permutations of a sorting network
        (`orthonormal.start_as_sorting_network_`)."""
        torch.manual_seed(self.seed)
        config = MLPConfig(in_features=dim, hidden=self.hidden, out_features=1, activation=self.activation,
                           group_size=self.group_size, mean=0.0, std=1.0)
        model = orthonormalise_layers_(LipschitzMLP(config), self.bjorck)
        return start_as_sorting_network_(model) if self.start == "sorting" else model


def train(critic: Critic, dim: int, draw: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> LipschitzMLP:
    """The critic trained by Adam (cosine decay of the rate to 0) to maximise mean f(P) - mean f(Q) on batches
    from `draw`, then frozen: the orthonormalised weights stored as plain float32 parameters."""
    model = critic.build(dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=critic.lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, critic.steps)
    for _ in range(critic.steps):
        p, q = draw(critic.batch_size)
        values = model(torch.cat([p, q]).float())[:, 0]  # one pass: Bjorck's iteration runs once a step
        loss = values[len(p):].mean() - values[:len(p)].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decay.step()
    return freeze_(model).eval()


@dataclass(frozen=True)
class Estimate:
    """The dual value on held-out samples, and what it certifies."""

    dual: float  # mean f(P) - mean f(Q) of the critic in float32: the estimate, for a critic taken as 1-Lipschitz
    lipschitz: float  # a proved upper bound of the critic's L2 Lipschitz constant, stored weights, exact arithmetic
    certified: float  # a proved lower bound of W1 between the held-out sample sets


def exact_mean(values: torch.Tensor) -> tuple[float, float]:
    """fsum(values) / n and a bound on its distance from the exact mean: fsum is correctly rounded and the
    division rounds once, so at most gamma_2 |mean|."""
    mean = math.fsum(values.tolist()) / len(values)
    return mean, rounding.gamma(2, torch.float64) * abs(mean)


@torch.no_grad()
@rounding.exact_arithmetic()
def certify(model: LipschitzMLP, p: torch.Tensor, q: torch.Tensor) -> Estimate:
    """A lower bound of W1 between the sample sets p and q (rows, float64, exact as given).

    For the exact critic f with stored weights and any L >= Lip(f) in L2,
    W1 >= (mean_p f - mean_q f) / L. f is evaluated in float64 (`model64`);
    `allowance.logit_allowance` bounds each value's distance from f's, and
    the means' and the subtraction's own roundings are bounded too, so the
    numerator used is a lower bound of the exact one. L is
    `certified_logit_bounds`, proved for the stored weights. Where the bound
    is not positive, or the critic may overflow, it is 0: W1 >= 0 always.
    """
    model64 = in_float64(model)
    ball = Ball("l2", 0.0)
    values, slack = [], 0.0
    for x in (p, q):
        mean, error = exact_mean(model64(x)[:, 0])
        lost, lost_error = exact_mean(allowance.logit_allowance(model64, x, ball, torch.float64)[:, 0])
        values.append(mean)
        slack += error + lost + lost_error
    numerator = values[0] - values[1] - slack
    numerator -= rounding.gamma(6, torch.float64) * (abs(values[0]) + abs(values[1]) + slack)
    lipschitz = float(model64.certified_logit_bounds("l2").per_logit[0])
    certified = 0.0
    if math.isfinite(numerator) and numerator > 0 and lipschitz > 0:
        certified = numerator / lipschitz * (1 - rounding.gamma(2, torch.float64))
    dual = float(model(p.float()).mean() - model(q.float()).mean())
    return Estimate(dual, lipschitz, certified)


def rounded_down(value: float, digits: int = 4) -> str:
    """A lower bound as text: rounded down, so that the digits shown still bound from below."""
    return f"{math.floor(value * 10**digits) / 10**digits:.{digits}f}"


def exact_w1(p: torch.Tensor, q: torch.Tensor) -> float:
    """The exact W1 between two uniform sample sets in L2, by POT's network simplex (`ot.emd2`)."""
    import ot

    cost = ot.dist(p.numpy(), q.numpy(), metric="euclidean")
    return float(ot.emd2(np.full(len(p), 1 / len(p)), np.full(len(q), 1 / len(q)), cost, numItermax=10**7))


class SampleError(cli.UsageError):
    """A sample file is missing, unreadable or not an array of shape (n, d) of finite numbers."""


def load_samples(path: Path) -> torch.Tensor:
    """The array in the .npy file `path` as float64 rows, checked: shape (n, d) with n, d >= 1, finite numbers."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SampleError(f"{path} does not exist") from None
    except (OSError, ValueError, EOFError) as err:
        raise SampleError(f"{path} is not a NumPy .npy array ({str(err).splitlines()[0] if str(err) else 'unreadable'})") from None
    if not isinstance(array, np.ndarray):
        raise SampleError(f"{path} holds several arrays: give one .npy array of shape (n, d)")
    if array.ndim != 2:
        raise SampleError(f"{path} has shape {array.shape}: give an array of shape (n, d)")
    if array.size == 0:
        raise SampleError(f"{path} is empty (shape {array.shape})")
    if not (np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)):
        raise SampleError(f"{path} holds {array.dtype} values: give real numbers")
    values = torch.from_numpy(array.astype(np.float64))
    if not torch.isfinite(values).all():
        raise SampleError(f"{path} holds NaN or infinite values")
    return values


def split(p: torch.Tensor, q: torch.Tensor, holdout: float, generator: torch.Generator
          ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Each set shuffled and cut into training rows and held-out rows (a fraction `holdout`, at least one)."""
    if p.shape[1] != q.shape[1]:
        raise SampleError(f"P has {p.shape[1]} dimensions and Q has {q.shape[1]}: give samples of one space")
    parts = []
    for name, x in (("P", p), ("Q", q)):
        if len(x) < 2:
            raise SampleError(f"{name} has {len(x)} sample: give at least 2 (some to train on, some held out)")
        x = x[torch.randperm(len(x), generator=generator)]
        kept = min(len(x) - 1, max(1, round(holdout * len(x))))
        parts.append((x[kept:], x[:kept]))
    return (parts[0][0], parts[1][0]), (parts[0][1], parts[1][1])


def plot(model: LipschitzMLP, task: str, path: Path) -> None:
    """The learned critic beside the true dual potential (the distance to the nearest point of Q, up to a
    constant): a curve on [-2, 2] for `line`, two heat maps for `circles`."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display needed

    with torch.no_grad():
        if task == "line":
            x = torch.linspace(-2, 2, 401, dtype=torch.float64)[:, None]
            learned = model(x.float())[:, 0].double()
            figure = Figure(figsize=(5.2, 4.0), layout="constrained")
            ax = figure.subplots()
            ax.plot(x[:, 0], learned - model(torch.zeros(1, 1))[0, 0].double(), label="critic f(x) - f(0)")
            ax.plot(x[:, 0], x[:, 0].abs(), linestyle="--", color="black", label="true dual |x|")
            ax.set_xlabel("x")
            ax.legend()
        else:
            xs, ys = torch.linspace(-4, 4, 321, dtype=torch.float64), torch.linspace(-2, 2, 161, dtype=torch.float64)
            grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
            centres = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
            true = torch.cdist(grid, centres).amin(dim=1)
            learned = model(grid.float())[:, 0].double()
            learned = learned - learned.min() + true.min()
            figure = Figure(figsize=(10.4, 2.9), layout="constrained")
            for ax, values, title in zip(figure.subplots(1, 2), (learned, true),
                                         ("critic f (shifted)", "true dual: distance to the nearest centre")):
                image = ax.imshow(values.reshape(len(ys), len(xs)), origin="lower", extent=(-4, 4, -2, 2),
                                  cmap="viridis")
                ax.contour(xs, ys, values.reshape(len(ys), len(xs)), levels=12, colors="white", linewidths=0.5)
                ax.set_title(title)
                figure.colorbar(image, ax=ax, shrink=0.8)
    checkpoints.atomic_write(path, lambda stream: figure.savefig(stream, format=path.suffix[1:] or "png", dpi=120))


def parse_args(argv: list[str] | None = None):
    parser = cli.Parser(description="Estimate W1 between two distributions with a 1-Lipschitz critic, and "
                                    "certify a lower bound of it.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", choices=sorted(TASKS), help="a built-in task whose true W1 is 1")
    source.add_argument("--samples", nargs=2, type=Path, metavar=("P.npy", "Q.npy"),
                        help="two sample sets, NumPy arrays of shape (n, d) and (m, d)")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=None,
                        help="the critic's activation (default: the task's; maxmin for --samples)")
    parser.add_argument("--group-size", type=cli.positive_int, default=2, help="groupsort's group size (default: 2)")
    parser.add_argument("--hidden", type=cli.widths, default=None,
                        help="the critic's hidden widths (default: the task's; 256,256,256 for --samples; with "
                             "--start sorting, the input's width in as many layers as the sorting network has "
                             "stages)")
    parser.add_argument("--start", choices=("orthogonal", "sorting"), default="orthogonal",
                        help="the layers' first weights: drawn orthogonal (default), or, for MaxMin critics whose "
                             "input width is a power of two, the permutations of Batcher's bitonic sorting network, "
                             "so that the critic starts as a full sort of its input (as FullSort)")
    parser.add_argument("--steps", type=cli.positive_int, default=None,
                        help="Adam steps (default: the task's; 1000 for --samples)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                        help="samples of each set per step (default: the task's; 256 for --samples)")
    parser.add_argument("--lr", type=cli.positive_float, default=None,
                        help="Adam's first learning rate, then cosine decay to 0 (default: the task's; 1e-3 for "
                             "--samples)")
    parser.add_argument("--bjorck-iterations", type=cli.positive_int, default=None,
                        help="Bjorck iterations in each forward pass (default: the task's; 20 for --samples)")
    parser.add_argument("--bjorck-order", type=int, choices=(1, 2, 3, 4), default=1, help="default: 1")
    parser.add_argument("--bjorck-beta", type=cli.half_float, default=0.5, help="order 1's step, at most 0.5 (default: 0.5)")
    parser.add_argument("--holdout", type=cli.positive_int, default=4096,
                        help="held-out samples of a task (default: 4096)")
    parser.add_argument("--holdout-fraction", type=cli.unit_float, default=0.2,
                        help="share of --samples held out for the estimate (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the critic and the samples (default: 0)")
    parser.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write the estimate, bound and settings here")
    parser.add_argument("--plot", type=Path, default=None, help="draw the critic beside the true dual "
                                                                 "(tasks line and circles)")
    args = parser.parse_args(argv)
    if args.plot is not None and args.task not in ("line", "circles"):
        raise cli.UsageError("--plot draws the critic of the line and circles tasks only")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            cli.check_output_file(path, flag)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    if args.task is not None:
        task = TASKS[args.task]
        dim = task.dim
        held_out = task.sample(args.holdout, torch.Generator().manual_seed(args.seed + 1))
        draw = lambda n: task.sample(n, generator)  # noqa: E731: fresh samples every step
    else:
        task = SAMPLES
        train_sets, held_out = split(*map(load_samples, args.samples), args.holdout_fraction, generator)
        dim = train_sets[0].shape[1]
        draw = lambda n: tuple(x[torch.randint(0, len(x), (n,), generator=generator)] for x in train_sets)  # noqa: E731
    bjorck = Bjorck(args.bjorck_iterations or task.bjorck_iterations, args.bjorck_order, args.bjorck_beta)
    hidden = args.hidden or task.hidden
    if args.start == "sorting" and args.hidden is None:
        hidden = (dim,) * len(bitonic_stages(dim))
    critic = Critic(hidden, args.activation or task.activation, args.group_size, bjorck, args.steps or task.steps,
                    args.batch_size or task.batch_size, args.lr or task.lr, args.seed, args.start)
    start, start_cpu = time.perf_counter(), time.process_time()
    model = train(critic, dim, draw)
    estimate = certify(model, *held_out)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    print(f"estimate (held-out dual value)   {estimate.dual:.4f}")
    print(f"certified lower bound of W1      {rounded_down(estimate.certified)}  (dual / proved Lipschitz bound "
          f"{estimate.lipschitz:.6f}, rounding included)")
    print(f"seconds (training and bound)     {seconds:.1f}  ({cpu_seconds:.1f} of CPU time, every thread)")
    result = {"estimate": estimate.dual, "certified_lower_bound": estimate.certified,
              "lipschitz_bound": estimate.lipschitz, "held_out": [len(held_out[0]), len(held_out[1])],
              "source": args.task or [str(path) for path in args.samples],
              "critic": {**asdict(critic), "bjorck": asdict(bjorck)}, "seconds": seconds, "cpu_seconds": cpu_seconds,
              **cli.provenance("wasserstein.py", argv)}
    if args.task is not None:
        print("true W1                          1 (also between the held-out sets)")
        result["true"] = 1.0
    elif len(held_out[0]) * len(held_out[1]) <= EXACT_LIMIT:
        result["exact_held_out"] = exact_w1(*held_out)
        print(f"exact W1 of the held-out sets    {result['exact_held_out']:.4f}  (POT's network simplex)")
    if args.json is not None:
        checkpoints.write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(model, args.task, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    cli.run(main)
