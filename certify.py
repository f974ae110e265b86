"""Certify a saved model on the MNIST test set: one method, a table of all, radius curves, per-example radii.

    python certify.py outputs/mnist_groupsort.p --cert_magnitude 0.1

prints the same two lines as the end of `train_mnist.py`. Beside them:

    python certify.py CKPT --method all --attack pgd          # one table: every method, and PGD
    python certify.py CKPT --norm l2 --cert_magnitude 1.58    # another input norm
    python certify.py CKPT --method all --eps 0 0.05 0.1      # radius curves: CSV and PNG
    python certify.py CKPT --method all --per-example r.csv   # certified radius of every example
    python certify.py CKPT --method exact --limit 100         # exact verification (MILP on HiGHS)
    python certify.py CKPT --method exact --shard 3/16 --per-example s3.csv   # one shard of a run
    python certify.py --merge exact.csv s0.csv s1.csv ...     # the shards' CSVs joined: the whole run's
    python certify.py CKPT --export-vnnlib bench --limit 100  # ONNX and VNN-LIB for other verifiers

The methods are those of `certificates.py` and, for lp, exact and best, of `milp.py`;
the measurements are `measure.py`'s; this script parses, calls them and prints.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so that a busy machine does not
# slow every step many times over (docs/usage.md, Troubleshooting). It changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import cli
import grids
import lipschitz
import measure
import milp
import shards
from attacks import ATTACKS, Counterexample
from certificates import METHODS, RADIUS_DIGITS, Accuracy
from checkpoints import COUNTEREXAMPLE_FORMATS, Expected, load_checkpoint, write_counterexamples, write_csv, write_json
from lipschitz import NORM_NAMES, Ball
from measure import Row
from mnist_data import PIXEL_RANGE, Split, load_mnist
from models import LipschitzMLP
from shards import Record, Shard

# Where IBP and the attack look: valid images only (the ball cut to [0, 1]), or the whole ball.
DOMAINS = {"pixels": PIXEL_RANGE, "ball": None}
ARITHMETIC = {"float32": torch.float32, "float64": torch.float64}  # --runs-in
EXIT_UNSOUND = 1  # an attack broke a certified example


def table(rows: list[Row], methods: tuple[str, ...], norm: str, examples: int, domain: str = "pixels") -> str:
    """One radius: a row per method. Several radii: a row per radius, certified % per method."""
    attacked = rows[0].robust is not None
    name = rows[0].attack if attacked else ""
    looking = " and ".join(["ibp"] * ("ibp" in methods) + [name] * attacked)
    where = ""
    if looking:
        where = f"; {looking} " + ("within the pixel range [0, 1]" if domain == "pixels" else "in the whole ball")
    if len(rows) == 1:
        return one_radius_table(rows[0], methods, norm, examples, where)
    lines = [f"{NORM_NAMES[norm]} certified accuracy (%) by radius, {examples} test examples, "
             f"clean {rows[0].clean:.3f}{where}",
             f"{'eps':<8}" + "".join(f"{m:>10}" for m in methods) + (f"{name:>10}{'broken':>8}" if attacked else "")]
    for row in rows:
        line = f"{row.eps!r:<8}" + "".join(f"{row.certified[m]:>10.3f}" for m in methods)
        if attacked:
            line += f"{row.robust:>10.3f}{sum(row.broken.values()):>8d}"
        lines.append(line)
    return "\n".join(lines)


def one_radius_table(row: Row, methods: tuple[str, ...], norm: str, examples: int, where: str) -> str:
    """A row per method at one radius: clean, certified and, when attacked, the attack's figures."""
    attacked = row.robust is not None
    lines = [f"{NORM_NAMES[norm]} radius {row.eps!r}, {examples} test examples{where}",
             f"{'method':<10}{'clean (%)':>11}{'certified (%)':>15}"
             + (f"{row.attack + ' robust (%)':>16}{'broken by ' + row.attack:>15}" if attacked else "")]
    for method in methods:
        line = f"{method:<10}{row.clean:>11.3f}{row.certified[method]:>15.3f}"
        if attacked:
            line += f"{row.robust:>16.3f}{row.broken[method]:>15d}"
        lines.append(line)
    return "\n".join(lines)


def write_per_example(path: Path, split: Split, radii: dict[str, torch.Tensor], methods: tuple[str, ...],
                      norm: str) -> None:
    """One row per example: index, label, prediction, top-2 margin, radius per method (in `norm`, pixels).

    The radii are already rounded down to RADIUS_DIGITS significant digits, which write them exactly.
    """
    columns = [radii["prediction"].tolist(), radii["top2_margin"].tolist(), *(radii[m].tolist() for m in methods)]
    header = ["index", "label", "prediction", "top2_margin", *(f"{norm}_radius_{m}" for m in methods)]
    rows = ([index, label, prediction, f"{margin:.6g}", *(f"{r:.{RADIUS_DIGITS}g}" for r in radius)]
            for index, (label, prediction, margin, *radius) in enumerate(zip(split.labels.tolist(), *columns)))
    write_csv(path, [header, *rows])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; long because it is the one flat list of them, read top to bottom."""
    parser = cli.Parser(description="Certify a saved Lipschitz MLP on the MNIST test set.")
    parser.add_argument("checkpoint", type=Path, nargs="?", default=None,
                        help="a checkpoint from train_mnist.py or the original demo")
    parser.add_argument("--cert_magnitude", "--cert-magnitude", type=cli.nonnegative_float, default=None,
                        help="radius in pixel units, in --norm (default: 0.1)")
    parser.add_argument("--method", choices=(*METHODS, "all", *milp.METHODS), default="global",
                        help="certificate rule; all prints a table of every rule; lp, exact and best verify "
                             "with HiGHS, L-inf only (default: %(default)s)")
    parser.add_argument("--time-limit", type=cli.positive_float, default=60.0, metavar="SECONDS",
                        help="lp, exact, best: time limit per example (default: %(default)s)")
    parser.add_argument("--workers", type=cli.positive_int, default=None, metavar="N",
                        help="lp, exact, best: verify N examples at once, in N processes (default: every core "
                             "this process may use)")
    parser.add_argument("--shard", type=cli.shard, default=None, metavar="K/N",
                        help="lp, exact, best: only every N-th test digit from digit K; --merge joins the shards' "
                             "--per-example CSVs")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar=("OUT.csv", "SHARD.csv"),
                        help="instead of certifying: join the --per-example CSVs of a run's shards into OUT.csv, "
                             "the unsharded run's table (give no checkpoint)")
    parser.add_argument("--export-vnnlib", type=Path, default=None, metavar="DIR",
                        help="instead of certifying: write DIR/network.onnx, DIR/prop_<index>.vnnlib for every test "
                             "digit (the L-inf ball of --cert_magnitude) and DIR/instances.csv (--time-limit each)")
    parser.add_argument("--export-simplify", action="store_true",
                        help="with --export-vnnlib, ReLU nets: drop the units dead on [0, 1]^784, scale every kept "
                             "unit's row to L1 norm 1 (what Marabou needs)")
    parser.add_argument("--save-adversarial", type=Path, default=None, metavar="FILE",
                        help="the counterexamples found by PGD (--attack pgd) or by exact/best: FILE.pt or FILE.npz "
                             "holds every one's input, FILE.png draws up to 8")
    parser.add_argument("--runs-in", choices=tuple(ARITHMETIC), default="float32",
                        help="the arithmetic of the network that is certified: as trained and saved (float32), or its "
                             "float64 copy, for a network deployed in float64; global to ibp only (default: %(default)s)")
    parser.add_argument("--norm", choices=lipschitz.NORMS, default="linf",
                        help="input norm of the ball (default: %(default)s)")
    parser.add_argument("--eps", type=cli.nonnegative_float, nargs="+", default=None, metavar="EPS",
                        help="several radii: write certified accuracy per method per radius to --curves")
    parser.add_argument("--curves", type=Path, default=Path("outputs/radius_curves.csv"),
                        help="CSV for --eps; the plot goes beside it as .png (default: %(default)s)")
    parser.add_argument("--per-example", type=Path, default=None, metavar="FILE.csv",
                        help="write each test example's certified radius per method to this CSV")
    parser.add_argument("--domain", choices=tuple(DOMAINS), default="pixels",
                        help="where ibp and the attack look: valid images (the ball cut to [0, 1]) or the "
                             "whole ball; the Lipschitz methods always certify the whole ball (default: %(default)s)")
    parser.add_argument("--attack", choices=("none", *ATTACKS), nargs="?", const=ATTACKS[0], default="none",
                        help="also attack every example: empirical robust accuracy; --attack alone is apgd (APGD-CE, "
                             "APGD-T and random-corner runs, as strong as AutoAttack in L-inf here), --attack pgd the plain "
                             "PGD of --pgd-steps and --pgd-restarts (default: %(default)s)")
    parser.add_argument("--pgd-steps", type=cli.positive_int, default=50, help="PGD steps (default: %(default)s)")
    parser.add_argument("--pgd-restarts", type=cli.positive_int, default=5,
                        help="PGD restarts, the first from the input itself (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts (default: %(default)s)")
    parser.add_argument("--limit", type=cli.positive_int, default=None, metavar="N",
                        help="use only the first N test examples")
    cli.add_data_flag(parser)
    cli.add_architecture_flags(parser)
    parser.add_argument("--mean", type=cli.finite_float, default=None,
                        help="input normalisation mean; must match a checkpoint's (original demo: 0.1307)")
    parser.add_argument("--std", type=cli.positive_float, default=None,
                        help="input normalisation std; must match a checkpoint's (original demo: 1)")
    cli.add_device_flags(parser)
    args = parser.parse_args(argv)
    if args.merge is not None:
        check_merge(args)
        return args
    if args.checkpoint is None:
        raise cli.UsageError("give a checkpoint to certify, or --merge OUT.csv SHARD.csv ... to join shards")
    for flag, value in (("--workers", args.workers), ("--shard", args.shard)):
        if value is not None and args.method not in milp.METHODS:
            raise cli.UsageError(f"{flag} applies to --method lp, exact and best, not {args.method}")
    if args.workers is None:
        args.workers = cli.cores()
    if args.export_simplify and args.export_vnnlib is None:
        raise cli.UsageError("--export-simplify simplifies the network that --export-vnnlib DIR writes: add it")
    if args.export_vnnlib is not None:
        check_export(args)
    if args.eps is not None and args.cert_magnitude is not None:
        raise cli.UsageError("give one radius with --cert_magnitude or several with --eps, not both")
    if args.cert_magnitude is None:
        args.cert_magnitude = 0.1
    if args.runs_in != "float32" and (args.method in milp.METHODS or args.export_vnnlib is not None):
        raise cli.UsageError(f"--runs-in {args.runs_in}: lp, exact, best and --export-vnnlib take the float32 network "
                             "only")
    if args.method in milp.METHODS and args.norm != "linf":
        raise cli.UsageError(f"--method {args.method} verifies L-inf balls only (an L2 ball is not linear): "
                             "give --norm linf")
    if args.method in milp.METHODS and args.eps is not None:
        raise cli.UsageError(f"--method {args.method} verifies one radius: give --cert_magnitude, not --eps")
    if args.save_adversarial is not None and args.attack == "none" and args.method not in ("exact", "best"):
        raise cli.UsageError("--save-adversarial draws counterexamples: add --attack pgd, or use --method exact "
                             "or best")
    if args.save_adversarial is not None and args.save_adversarial.suffix not in (*COUNTEREXAMPLE_FORMATS, ".png"):
        raise cli.UsageError(f"--save-adversarial {args.save_adversarial}: name a .pt or .npz file (the inputs) or "
                             "a .png file (a picture)")
    outputs = [("--per-example", args.per_example), ("--save-adversarial", args.save_adversarial)]
    if args.eps is not None:
        outputs += [("--curves", args.curves), ("--curves", args.curves.with_suffix(".png")),
                    ("--curves", shards.record_path(args.curves))]
    for flag, path in outputs:
        if path is not None:
            cli.check_output_file(path, flag)
    return args


def check_merge(args: argparse.Namespace) -> None:
    """--merge OUT.csv SHARD.csv ...: an output, at least one shard, none the output, and nothing to certify."""
    if args.checkpoint is not None:
        raise cli.UsageError("--merge joins shard CSVs and certifies nothing: give no checkpoint")
    if len(args.merge) < 2:
        raise cli.UsageError("--merge OUT.csv SHARD.csv ...: name the output, then every shard's CSV")
    out, *inputs = args.merge
    if out.resolve() in {path.resolve() for path in inputs}:
        raise cli.UsageError(f"--merge {out}: the output is also one of the shards")
    cli.check_output_file(out, "--merge")


def check_export(args: argparse.Namespace) -> None:
    """--export-vnnlib DIR: one radius in L-inf, and a folder that can be written."""
    if args.norm != "linf" or args.eps is not None:
        raise cli.UsageError("--export-vnnlib writes L-inf boxes of one radius: give --norm linf and --cert_magnitude")
    if args.export_vnnlib.exists() and not args.export_vnnlib.is_dir():
        raise cli.UsageError(f"--export-vnnlib {args.export_vnnlib} is a file: give a folder")
    cli.check_output_file(args.export_vnnlib / "instances.csv", "--export-vnnlib")


def export_benchmark(args: argparse.Namespace, model: LipschitzMLP, test: Split, ball: Ball) -> None:
    """--export-vnnlib DIR: the network as ONNX (simplified with --export-simplify), a VNN-LIB property per digit
    and instances.csv (`export.write_benchmark`)."""
    import export  # onnx is needed only here

    model = model.cpu()
    if args.export_simplify:
        model = export.simplified(model)
    written = export.write_benchmark(args.export_vnnlib, model, test, list(range(len(test))), ball, args.time_limit)
    print(f"wrote {written.network}, {len(written.properties)} properties and {written.instances}")


def merge(args: argparse.Namespace) -> None:
    """Join the shards' CSVs (`shards.merge`) into OUT.csv, with the whole run's record beside it."""
    out, *inputs = args.merge
    rows, record = shards.merge(inputs)
    shards.write_with_record(out, rows, record)
    print(f"wrote {out} ({len(rows) - 1} digits from {len(inputs)} shards)")


@dataclass(frozen=True)
class Run:
    """The digits that a run certifies: the test split, or one shard of it, with their indices in it."""

    test: Split
    indices: list[int]
    digits: int  # of the whole run, every shard together
    shard: Shard


def shard_of(test: Split, shard: Shard | None) -> Run:
    """The digits of `shard` (all of them without one)."""
    shard = shard or Shard()
    indices = list(shard.positions(len(test)))
    return Run(Split(test.images[indices], test.labels[indices]), indices, len(test), shard)


def expected(args: argparse.Namespace) -> Expected:
    """What the flags say the checkpoint holds."""
    normalisation = None if args.mean is None and args.std is None else (
        0.1307 if args.mean is None else args.mean, 1.0 if args.std is None else args.std)
    return Expected(args.activation, args.group_size, args.hidden, normalisation)


def write_curves(args: argparse.Namespace, rows: list[Row], methods: tuple[str, ...], model: LipschitzMLP,
                 examples: int) -> None:
    import curves  # matplotlib is needed only here

    curve = curves.Curve.from_rows(args.norm, rows, methods)
    curves.write_csv(args.curves, curve)
    write_json(shards.record_path(args.curves), {**cli.provenance("certify.py"), "examples": examples,
                                                "domain": args.domain})
    title = f"{args.checkpoint.name} ({model.config.activation}), {examples} test examples"
    curves.plot([(title, curve)], args.curves.with_suffix(".png"))
    print(f"wrote {args.curves}, its record {shards.record_path(args.curves)} and {args.curves.with_suffix('.png')}")


def verify(args: argparse.Namespace, model: LipschitzMLP, run: Run, ball: Ball) -> None:
    """lp, exact or best: a verdict per example, a table of their counts, and the files asked for. Interrupted
    (Ctrl-C, SIGTERM), it writes the verdicts reached so far to the same files, says so, and exits 130 (or
    128 + the signal)."""
    test, done = run.test, {}
    try:
        milp.verify_split(model, test, ball, args.method, args.time_limit, args.pgd_steps, args.pgd_restarts,
                          args.seed, progress=sys.stderr.isatty(), workers=args.workers,
                          attack=ATTACKS[0] if args.attack == "none" else args.attack, indices=run.indices, into=done)
    except (KeyboardInterrupt, cli.Stopped) as stop:
        print(f"\ninterrupted: {len(done)} of {len(test)} examples verified", file=sys.stderr)
        write_verdicts(args, run, ball, done)
        sys.exit(getattr(stop, "status", 130))
    write_verdicts(args, run, ball, done)


def write_verdicts(args: argparse.Namespace, run: Run, ball: Ball, done: dict[int, milp.Verdict]) -> None:
    """The table of the verdicts in `done` (by position in the run) and the files asked for; an interrupted
    run's per-example CSV holds the examples it verified, which --merge refuses as a shard with digits missing."""
    positions = sorted(done)
    verdicts = [done[k] for k in positions]
    print(verdict_table(verdicts, args.method, ball, len(verdicts), args.domain, args.time_limit))
    warn_overflow(sum(v.decided_by == "overflow" for v in verdicts))
    if args.per_example is not None:
        labels = run.test.labels.tolist()
        rows = [["index", "label", "verdict", "decided_by", "seconds", "predicted"],
                *([run.indices[k], labels[k], v.status, v.decided_by, f"{v.seconds:.4f}",
                   "" if v.counterexample is None else v.counterexample.predicted]
                  for k, v in zip(positions, verdicts))]
        record = Record(shards.sha256_of(args.checkpoint), args.cert_magnitude, args.norm, args.domain, args.method,
                        args.time_limit, args.pgd_steps, args.pgd_restarts, args.seed, run.digits,
                        shards.code_version(Path(__file__).resolve().parent), str(run.shard))
        shards.write_with_record(args.per_example, rows, record)
        print(f"wrote {args.per_example} and {shards.record_path(args.per_example)}")
    if args.save_adversarial is not None:
        found = [v.counterexample for v in verdicts if v.counterexample is not None and v.decided_by != "clean"]
        save_counterexamples(args, found)


def verdict_table(verdicts: list, method: str, ball: Ball, examples: int, domain: str, time_limit: float) -> str:
    """Counts and percentages of each verdict, and the time per example."""
    where = "within the pixel range [0, 1]" if domain == "pixels" else "in the whole ball"
    seconds = [v.seconds for v in verdicts]
    lines = [f"L-inf radius {ball.eps!r}, {examples} test examples {where}; {method}, "
             f"time limit {time_limit:g} s per example",
             f"{'verdict':<16}{'examples':>10}{'(%)':>10}"]
    for status in milp.VERDICTS:
        count = sum(v.status == status for v in verdicts)
        lines.append(f"{status:<16}{count:>10d}{100 * count / max(1, examples):>10.2f}")
    settled = [v for v in verdicts if v.status in ("robust", "counterexample") or v.decided_by == "overflow"]
    decided = {stage: sum(v.decided_by == stage for v in settled)  # a timeout or an open relaxation decides nothing
               for stage in ("clean", "ibp", *ATTACKS, "lp", "milp", "overflow")}
    lines.append("decided by: " + ", ".join(f"{stage} {count}" for stage, count in decided.items() if count))
    lines.append(f"seconds per example: mean {sum(seconds) / max(1, examples):.3f}, max {max(seconds, default=0):.3f}")
    return "\n".join(lines)


def warn_overflow(count: int) -> None:
    """One line on stderr when examples went uncertified because the float32 network may overflow."""
    if count:
        print(f"warning: {count} examples not certified: the float32 network may overflow in their ball "
              "(a value near float32's largest)", file=sys.stderr)


def save_counterexamples(args: argparse.Namespace, found: list[Counterexample]) -> None:
    """--save-adversarial: every counterexample's input (.pt, .npz), or a picture of the first 8 (.png)."""
    path = args.save_adversarial
    if path.suffix in COUNTEREXAMPLE_FORMATS:
        write_counterexamples(path, found, args.cert_magnitude, args.norm)
    else:
        found = found[:8]
        grids.draw(path, found, args.cert_magnitude, f"{args.checkpoint.name}: counterexamples at "
                   f"{NORM_NAMES[args.norm]} radius {args.cert_magnitude:g} (the first {len(found)})")
    print(f"wrote {path} ({len(found)} counterexamples)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.merge is not None:
        merge(args)
        return
    device = cli.pick_device(args.device, args.no_cuda)
    checkpoint = load_checkpoint(args.checkpoint, expected(args))
    (test,) = load_mnist(args.data_dir, splits=("test",))
    if args.limit is not None:
        test = test.head(args.limit)
    if checkpoint.model.config.in_features != test.images.shape[1]:
        raise cli.UsageError(f"{args.checkpoint} takes {checkpoint.model.config.in_features} inputs, "
                             f"but MNIST images have {test.images.shape[1]} pixels")
    model, test = checkpoint.model.to(device), test.to(device)
    if args.runs_in != "float32":  # the float32 weights and pixels are exact in float64
        arithmetic = ARITHMETIC[args.runs_in]
        model, test = model.to(arithmetic), Split(test.images.to(arithmetic), test.labels)
    ball = Ball(args.norm, args.cert_magnitude, DOMAINS[args.domain])
    if args.export_vnnlib is not None:
        export_benchmark(args, model, test, ball)
        return
    if args.method in milp.METHODS:
        verify(args, model, shard_of(test.to("cpu"), args.shard), ball)
        return
    methods = METHODS if args.method == "all" else (args.method,)
    keep = None if args.save_adversarial is not None and args.save_adversarial.suffix != ".png" else 8
    rows = [measure.measure(model, test, ball.with_eps(eps), methods, args.attack, args.pgd_steps, args.pgd_restarts,
                            args.seed, keep, progress=sys.stderr.isatty())
            for eps in (args.eps or [args.cert_magnitude])]
    if args.eps is None and args.method != "all" and args.attack == "none":
        print(Accuracy(rows[0].clean, rows[0].certified[args.method]).lines())
    else:
        print(table(rows, methods, args.norm, len(test), args.domain))
    warn_overflow(max(row.overflow for row in rows))
    if args.eps is not None:
        write_curves(args, rows, methods, model, len(test))
    if args.per_example is not None:
        radii = measure.certified_radii(model, test, methods, args.norm, ball.domain)
        write_per_example(args.per_example, test.to("cpu"), {k: v.cpu() for k, v in radii.items()}, methods, args.norm)
        print(f"wrote {args.per_example}")
    if args.save_adversarial is not None:
        save_counterexamples(args, rows[0].counterexamples or [])
    broken = sum(sum(row.broken.values()) for row in rows if row.broken)
    if broken:
        print(f"error: {rows[0].attack} broke {broken} certified examples: a certificate is unsound", file=sys.stderr)
        sys.exit(EXIT_UNSOUND)


if __name__ == "__main__":
    cli.stop_on_signals()
    cli.run(main)
