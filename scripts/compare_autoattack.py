"""Compare `attacks.apgd` with the standard AutoAttack and with `attacks.pgd` on the original demo's checkpoints.

    python scripts/compare_autoattack.py --data-dir ../shared/mnist               # the first 1,000 test digits
    python scripts/compare_autoattack.py --data-dir ../shared/mnist --all-digits  # and apgd, pgd on all 10,000
    python scripts/compare_autoattack.py --data-dir ../shared/mnist --norm l1 --eps 3 --limit 300  # L1
    python scripts/compare_autoattack.py --data-dir ../shared/mnist --json results/attacks/linf.json  # and a record
    python scripts/compare_autoattack.py --data-dir ../shared/mnist --norm l2 --eps 1.58 --digits 675,880 --seed 3
    python scripts/compare_autoattack.py --data-dir ../shared/mnist --apgd-seeds 1,2,3,4,5,6,7  # apgd's seeds

At L-inf 0.1 (or `--norm`, `--eps`) within the pixel range [0, 1], on the original demo's relu.p and groupsort.p. The reference
is AutoAttack's standard version (APGD-CE, APGD-T, FAB-T and Square; Croce & Hein 2020) from the
`pyautoattack` package. The project does not depend on it: install it by hand with
`pip install --no-deps pyautoattack` (--no-deps keeps the project's torch), and without it this script
stops with one line.

One table for the first `--limit` digits: per net and attack, the robust accuracy, the digits that
AutoAttack breaks and the attack misses (0 for an attack at least as strong on these digits), the digits
the attack breaks and AutoAttack misses, and the wall-clock seconds. A digit counts as broken where
another class ties or beats the label at the attack's point (`attacks.attack_loss` >= 0, the network
in float32), for AutoAttack too; every point is checked to lie in the ball and the pixel range.
`--all-digits` adds the robust accuracy and seconds of apgd and pgd on all 10,000 test digits, and the
digits each breaks that the other misses. `--digits` compares on the test digits named instead of the first
`--limit`; `--components` adds AutoAttack's four attacks run one at a time, each with the standard version's
settings, as AutoAttack's `run_standard_evaluation_individual` runs them. `--apgd-seeds` adds `apgd` at other seeds,
each compared with AutoAttack at `--seed`.

`--json FILE` writes the same figures, and the test indices each attack left robust, with the command, seed,
threads, machine and date;
`scripts/measure_attacks.sh` writes results/attacks/{linf,l2,l1}.json and the L1 seeds' and L2 narrow digits'
records, from which `scripts/report.py` generates the tables of docs/results.md.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks  # noqa: E402
import checkpoints  # noqa: E402
import cli  # noqa: E402
import lipschitz  # noqa: E402
from lipschitz import Ball  # noqa: E402
from mnist_data import IMAGE_SIZE, PIXEL_RANGE, Split, load_mnist  # noqa: E402
from models import LipschitzMLP  # noqa: E402

REFERENCE = "pyautoattack"
NETS = {"relu": checkpoints.Expected(activation="relu"),
        "groupsort": checkpoints.Expected(activation="groupsort", group_size=10)}
PGD_STEPS, PGD_RESTARTS = 50, 5  # certify.py's defaults
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version's attacks, in its order
ORIGINAL_DEMO = Path(__file__).resolve().parents[2] / "shared" / "original-demo"

Attack = Callable[[LipschitzMLP, torch.Tensor, torch.Tensor, Ball], torch.Tensor]


def autoattack_class() -> type:
    """pyautoattack's AutoAttack, imported only here: a missing package is one line, not a traceback."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise cli.UsageError(f"the reference attack needs the {REFERENCE} package, which the project does not "
                             f"depend on: pip install --no-deps {REFERENCE}") from None
    return AutoAttack


def autoattack(seed: int, component: str | None = None) -> Attack:
    """The standard AutoAttack in the ball's norm and radius, or one of its attacks (`component`) alone with the
    standard version's settings; its points, broken or not."""
    reference = autoattack_class()

    def run(model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball) -> torch.Tensor:
        frozen = copy.deepcopy(model).requires_grad_(False)  # FAB's backward passes need no weight gradients
        attack = reference(frozen, norm=AUTOATTACK_NORMS[ball.norm], eps=float(ball.eps), version="standard", seed=seed)
        if component is not None:
            attack.attacks_to_run = [component]
        images = x.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)  # Square draws squares on the image
        points, _ = attack.run_standard_evaluation(images, labels, batch_size=len(x))
        return points.flatten(1)

    return run


def apgd(seed: int, use_ibp: bool = True) -> Attack:
    return lambda model, x, labels, ball: attacks.apgd(model, x, labels, ball, seed=seed, use_ibp=use_ibp)[1]


def pgd(seed: int) -> Attack:
    return lambda model, x, labels, ball: attacks.pgd(model, x, labels, ball, PGD_STEPS, PGD_RESTARTS, seed=seed)[1]


def broken_at(model: LipschitzMLP, x: torch.Tensor, labels: torch.Tensor, ball: Ball, points: torch.Tensor,
              name: str) -> torch.Tensor:
    """Which digits another class ties or beats at `points`; fails when a point leaves the ball or the domain."""
    slack = 1e-6 * x.shape[1]  # float32 rounding of x + delta, in each coordinate
    if lipschitz.vector_norm(points.double() - x.double(), ball.norm).max() > float(ball.eps) + slack \
            or points.min() < PIXEL_RANGE[0] \
            or points.max() > PIXEL_RANGE[1]:
        raise cli.UsageError(f"{name} returned a point outside the ball or the pixel range")
    with torch.no_grad():
        return attacks.attack_loss(model(points), labels) >= 0


def timed(attack: Attack, model: LipschitzMLP, split: Split, ball: Ball) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    points = attack(model, split.images, split.labels, ball)
    return points, time.perf_counter() - start


def write_json(args: argparse.Namespace, digits: list[int], rows: list, totals: list, version: str) -> None:
    """The table (and the all-digit runs) as JSON, with what it was measured with."""
    def robust(broken: torch.Tensor) -> float:
        return round(100 * (1 - broken.double().mean().item()), 2)

    record = {
        **cli.provenance("scripts/compare_autoattack.py"),
        "norm": args.norm, "eps": args.eps, "limit": args.limit, "seed": args.seed,
        **({"digits": digits} if args.digits else {}),
        "reference": f"{REFERENCE} {version}",
        "rows": [{"net": net, "attack": name, "robust": robust(broken),
                  "missed": None if by_reference is None else int((by_reference & ~broken).sum()),
                  "extra": None if by_reference is None else int((broken & ~by_reference).sum()),
                  "seconds": round(seconds, 1),
                  "robust_digits": [digits[at] for at in (~broken).nonzero().flatten().tolist()]}
                 for net, name, broken, by_reference, seconds in rows],
        "all_digits": [{"net": net, "attack": name, "robust": robust(broken), "seconds": round(seconds, 1),
                        "other_breaks_missed": int((totals[index ^ 1][2] & ~broken).sum())}
                       for index, (net, name, broken, seconds) in enumerate(totals)],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.write_json(args.json, record)
    print(f"wrote {args.json}", file=sys.stderr)


def main() -> None:
    parser = cli.Parser(description=__doc__.splitlines()[0])
    cli.add_data_flag(parser)
    parser.add_argument("--checkpoints", type=Path, default=ORIGINAL_DEMO,
                        help="folder holding relu.p and groupsort.p (default: %(default)s)")
    parser.add_argument("--limit", type=cli.positive_int, default=1000,
                        help="compare on the first LIMIT test digits (default: %(default)s)")
    parser.add_argument("--norm", choices=tuple(AUTOATTACK_NORMS), default="linf",
                        help="the ball's norm (default: %(default)s)")
    parser.add_argument("--eps", type=cli.positive_float, default=0.1, help="the ball's radius (default: %(default)s)")
    parser.add_argument("--digits", type=cli.indices, default=None, metavar="I,J,...",
                        help="compare on these test digits (indices) instead of the first LIMIT")
    parser.add_argument("--components", action="store_true",
                        help="also run AutoAttack's four attacks one at a time, each with the standard settings")
    parser.add_argument("--seed", type=int, default=0, help="seed of every attack (default: %(default)s)")
    parser.add_argument("--apgd-seeds", type=cli.indices, default=(), metavar="K,L,...",
                        help="also run apgd at these seeds, each against AutoAttack at --seed")
    parser.add_argument("--all-digits", action="store_true",
                        help="also run apgd and pgd on all 10,000 test digits and print their times")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the table, with the command, seed, threads, machine and date, to FILE "
                             "(results/attacks/NORM.json is what docs/results.md's tables are generated from)")
    args = parser.parse_args()
    if args.json is not None:
        cli.check_output_file(args.json, "--json")
    reference = autoattack(args.seed)  # fails at once when the package is missing
    (test,) = load_mnist(args.data_dir, ("test",), allow_download=False)
    ball = Ball(args.norm, args.eps, PIXEL_RANGE)
    if args.digits and max(args.digits) >= len(test):
        raise cli.UsageError(f"--digits: the test split has {len(test)} digits, indices 0 to {len(test) - 1}")
    digits = list(args.digits) if args.digits else list(range(min(args.limit, len(test))))
    head = Split(test.images[digits], test.labels[digits])
    contenders: dict[str, Attack] = {
        "apgd (APGD_DEFAULT)": apgd(args.seed),
        "apgd, use_ibp=False": apgd(args.seed, use_ibp=False),
        f"pgd ({PGD_STEPS} steps, {PGD_RESTARTS} restarts)": pgd(args.seed),
    }
    contenders.update({f"apgd, seed {seed}": apgd(seed) for seed in args.apgd_seeds})
    if args.components:
        contenders.update({f"AutoAttack's {component} alone": autoattack(args.seed, component)
                           for component in COMPONENTS})
    rows, totals = [], []
    for net, expected in NETS.items():
        model = checkpoints.load_checkpoint(args.checkpoints / f"{net}.p", expected).model
        points, seconds = timed(reference, model, head, ball)
        by_reference = broken_at(model, head.images, head.labels, ball, points, "AutoAttack")
        rows.append((net, "AutoAttack (standard)", by_reference, None, seconds))
        print(f"{net}: AutoAttack {seconds:.1f} s", file=sys.stderr, flush=True)
        for name, attack in contenders.items():
            points, seconds = timed(attack, model, head, ball)
            broken = broken_at(model, head.images, head.labels, ball, points, name)
            rows.append((net, name, broken, by_reference, seconds))
            print(f"{net}: {name} {seconds:.1f} s", file=sys.stderr, flush=True)
        if args.all_digits:
            for name in ("apgd (APGD_DEFAULT)", f"pgd ({PGD_STEPS} steps, {PGD_RESTARTS} restarts)"):
                points, seconds = timed(contenders[name], model, test, ball)
                totals.append((net, name, broken_at(model, test.images, test.labels, ball, points, name), seconds))
                print(f"{net}: {name} on all {len(test)} digits {seconds:.1f} s", file=sys.stderr, flush=True)
    version = importlib.metadata.version(REFERENCE)
    which = f"test digits {', '.join(map(str, digits))}" if args.digits else f"first {len(head)} test digits"
    print(f"{args.norm} {args.eps} within [0, 1], {which}, seed {args.seed}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {REFERENCE} {version}")
    print(f"{'net':<10} {'attack':<28} {'robust (%)':>10} {'AA breaks, missed':>18} {'breaks AA misses':>17} "
          f"{'seconds':>8}")
    for net, name, broken, by_reference, seconds in rows:
        missed = "-" if by_reference is None else str(int((by_reference & ~broken).sum()))
        extra = "-" if by_reference is None else str(int((broken & ~by_reference).sum()))
        print(f"{net:<10} {name:<28} {100 * (1 - broken.double().mean().item()):>10.2f} {missed:>18} {extra:>17} "
              f"{seconds:>8.1f}")
    if args.json is not None:
        write_json(args, digits, rows, totals, version)
    if totals:
        print(f"all {len(test)} test digits (the other attack: pgd for apgd, apgd for pgd)")
        print(f"{'net':<10} {'attack':<28} {'robust (%)':>10} {'other breaks, missed':>21} {'seconds':>8}")
        for index, (net, name, broken, seconds) in enumerate(totals):
            other = totals[index ^ 1][2]  # apgd and pgd alternate, per net
            print(f"{net:<10} {name:<28} {100 * (1 - broken.double().mean().item()):>10.2f} "
                  f"{int((other & ~broken).sum()):>21} {seconds:>8.1f}")


if __name__ == "__main__":
    cli.run(main)
