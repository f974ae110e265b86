"""Certify and attack a trained recipe's checkpoint on the whole test set, and record it as JSON.

    python scripts/measure_recipe.py outputs/recipes/mnist_cnn-ibp.p --data-dir ../shared/mnist --json results/recipes/cnn-ibp.json

At the norm and radius the checkpoint was trained for (its metrics JSON), within the pixel range (or with
`--domain ball` in the whole ball): every sound method that takes the network (global, pairwise, margin,
ibp), the tightest of them, and APGD (`attacks.apgd`, the project's strongest attack) on every digit (or the
first `--attack-limit`), with the certified digits it broke (must be 0, else the script exits 1). With `--verify SECONDS` (L-inf nets), exact
verification too (`milp.verify_split`, method `best`: IBP, APGD, PGD, then the linear relaxation and the
mixed-integer program on what is left, SECONDS per digit, on every core; or `--verify-method exact` or `lp`):
its robust verdicts are certified as that method (APGD's broken ones counted among them too), with its
counts and time. With `--runs-in float64`, the network's float64 copy is certified and attacked
(`certify.py --runs-in`). `--radius` takes another radius than the trained one; the original demo's bare
state_dicts (`--activation`, as `certify.py`) are measured at its L-inf 0.1, with no training figures. The
record holds the training's own figures from the metrics JSON (settings, seconds, seconds per epoch, clean and
certified as training printed them) beside these, with the command, threads, machine and date; its recipe is
the checkpoint's name, mnist_<recipe>[+<tag>][_seed<k>].p, as `scripts/measure_recipes.sh` names them (a tag
marks a variant, whose extra training flags `--variant` records).
`scripts/report.py` builds docs/results.md's tables from them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import checkpoints  # noqa: E402
import cli  # noqa: E402
import milp  # noqa: E402
from certificates import METHODS, percent  # noqa: E402
from checkpoints import Expected  # noqa: E402
from lipschitz import Ball  # noqa: E402
from measure import measure  # noqa: E402
from mnist_data import PIXEL_RANGE, Split, load_mnist  # noqa: E402
from models import LipschitzMLP  # noqa: E402
from training import Recipe  # noqa: E402

TRAINING = ("seed", "convs", "hidden", "activation", "loss", "train_eps", "epochs", "ramp_epochs", "lr", "lr_drops",
            "gamma", "compiled", "train_seconds", "seconds_per_epoch_median", "peak_rss_mb", "clean_accuracy",
            "certified_accuracy", "method")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/mnist"))
    parser.add_argument("--json", type=Path, required=True, metavar="FILE")
    parser.add_argument("--limit", type=cli.positive_int, default=None, metavar="N", help="the first N digits only")
    parser.add_argument("--attack-limit", type=cli.positive_int, default=None, metavar="N",
                        help="attack the first N of the digits only (APGD on a wide CNN in L2 takes some 0.7 s a "
                             "digit with one thread)")
    parser.add_argument("--verify", type=cli.positive_float, default=None, metavar="SECONDS",
                        help="also verify every digit exactly (method best), with this time limit per digit")
    parser.add_argument("--verify-method", choices=milp.METHODS, default="best",
                        help="with --verify: best (default), exact (the program on every digit IBP leaves open) "
                             "or lp (the linear relaxation alone)")
    parser.add_argument("--runs-in", choices=("float32", "float64"), default="float32",
                        help="certify and attack the network as run in this arithmetic (certify.py's --runs-in; "
                             "not with --verify, which takes the float32 network)")
    parser.add_argument("--domain", choices=("pixels", "ball"), default="pixels",
                        help="IBP and APGD within the pixel range (default), or in the whole ball, as certify.py's "
                             "--domain: the Lipschitz certificates are the same either way")
    parser.add_argument("--workers", type=cli.positive_int, default=None, metavar="N",
                        help="processes for --verify (default: the machine's cores)")
    parser.add_argument("--radius", type=cli.positive_float, default=None, metavar="EPS",
                        help="certify, attack and verify at this radius (default: the one the net was trained for)")
    parser.add_argument("--variant", default=None, metavar="FLAGS",
                        help="the train_mnist.py flags that trained this checkpoint beyond its recipe, for the record "
                             "(scripts/measure_recipes.sh's FLAGS; the checkpoint is then mnist_<recipe>+<tag>.p)")
    cli.add_architecture_flags(parser)
    args = parser.parse_args()
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, Expected(args.activation, args.group_size, args.hidden))
    model = checkpoint.model.eval()
    metrics = training_metrics(args.checkpoint, checkpoint.original)
    (test,) = load_mnist(args.data_dir, splits=("test",), allow_download=False)
    if args.limit:
        test = test.head(args.limit)
    radius = metrics["cert_magnitude"] if args.radius is None else args.radius
    ball = Ball(metrics["norm"], radius, PIXEL_RANGE if args.domain == "pixels" else None)
    if args.verify is not None and ball.norm != "linf":
        raise cli.UsageError(f"--verify takes L-inf nets only; this one was trained for {ball.norm}")
    if args.runs_in == "float64":  # the float32 weights and pixels are exact in float64
        if args.verify is not None:
            raise cli.UsageError("--verify takes the float32 network only: drop --runs-in float64")
        model, test = model.double(), Split(test.images.double(), test.labels)
    start = time.perf_counter()
    attacked = test if args.attack_limit is None or args.attack_limit >= len(test.labels) else test.head(
        args.attack_limit)
    row = measure(model, attacked, ball, METHODS, attack="apgd", keep=None)
    whole = row if attacked is test else measure(model, test, ball, METHODS)
    certified, attacked_certified, broken = dict(whole.certified), dict(row.certified), dict(row.broken)
    verification = None
    if args.verify is not None:
        verification, robust = verify(model, test, ball, args.verify_method, args.verify, args.workers or cli.cores())
        certified[args.verify_method] = verification["robust"]
        attacked_certified[args.verify_method] = percent(robust[: len(attacked.labels)])
        broken[args.verify_method] = sum(bool(robust[c.index]) for c in row.counterexamples)
    seconds = time.perf_counter() - start
    best = max(certified, key=lambda method: (certified[method], method == metrics.get("method")))  # ties: its own
    record = {
        **cli.provenance("scripts/measure_recipe.py"),
        "checkpoint": args.checkpoint.name, "original": checkpoint.original,
        "recipe": re.sub(r"_seed\d+$", "", args.checkpoint.stem.removeprefix("mnist_")).split("+")[0],
        **({"variant": args.variant} if args.variant else {}),
        "training": {key: metrics.get(key) for key in TRAINING},
        "runs_in": args.runs_in, "domain": args.domain, "digits": len(test.labels), "norm": ball.norm,
        "radius": ball.eps, "clean": whole.clean,
        "certified": certified, "best_method": best, "best_certified": certified[best],
        "overflow": whole.overflow, "attack": row.attack, "attacked_digits": len(attacked.labels),
        "attacked_certified": attacked_certified[best], "attack_robust": row.robust, "broken_certified": broken,
        "certify_and_attack_seconds": round(seconds, 1),
        **({"verification": verification} if verification else {}),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.write_json(args.json, record)
    print(f"{args.checkpoint.name}: clean {whole.clean:.2f}, certified {certified[best]:.2f} ({best}); on the "
          f"{len(attacked.labels)} digits attacked, apgd robust {row.robust:.2f}, certified digits broken "
          f"{broken[best]}; {seconds:.0f} s")
    if any(broken.values()):
        sys.exit(1)


def training_metrics(path: Path, original: bool) -> dict[str, object]:
    """The checkpoint's training record (metrics JSON): the norm and radius it was trained for, and the figures
    training printed. The original demo saved none: its norm and radius are `Recipe`'s defaults, which are the
    original's, and there are no training figures."""
    if original:
        defaults = Recipe()
        return {"norm": defaults.norm, "cert_magnitude": defaults.cert_magnitude}
    metrics_path = checkpoints.metrics_path(path)
    if not metrics_path.is_file():
        raise cli.UsageError(f"{metrics_path} is missing: it records the norm and radius the net was trained for")
    return json.loads(metrics_path.read_text())


def verify(model: LipschitzMLP, test: Split, ball: Ball, method: str, time_limit: float, workers: int
           ) -> tuple[dict[str, object], torch.Tensor]:
    """Verification of every digit (`milp.verify_split` with `method`): the record's counts, the stage that
    decided each settled digit and the stage each timeout stopped in, the time, and the mask of digits verified
    robust."""
    start = time.perf_counter()
    verdicts = milp.verify_split(model, test, ball, method, time_limit=time_limit, workers=workers, progress=False)
    robust = torch.tensor([v.status == "robust" for v in verdicts])
    counts = {status: sum(v.status == status for v in verdicts) for status in milp.VERDICTS}
    decided = {stage: sum(v.decided_by == stage for v in verdicts if v.status in ("robust", "counterexample"))
               for stage in sorted({v.decided_by for v in verdicts})}
    return {"method": method, "time_limit": time_limit, "workers": workers, "robust": percent(robust),
            "verdicts": counts, "decided_by": {k: n for k, n in decided.items() if n},
            "timed_out_in": dict(sorted(Counter(v.decided_by for v in verdicts if v.status == "timeout").items())),
            "seconds": round(time.perf_counter() - start, 1)}, robust


if __name__ == "__main__":
    cli.run(main)
