"""How large the rounding allowance is, against the rounding that occurs, on one checkpoint's test set.

    OMP_NUM_THREADS=2 python scripts/measure_allowance.py outputs/recipes/mnist_demo.p --data-dir ../shared/mnist --json results/epyc/allowance/demo_size.json

At the norm and radius the net was trained for (the original demo's files: L-inf 0.1, with `--activation`), within
the pixel range, on every test digit: per logit, `allowance.logit_allowance`, the bound on the float32 network's
error anywhere in the ball (plus the float64 forward pass's own error at the digit), and the error that occurs at
the digit itself, |f32(x) - f64(x)| between the network run in float32 (all digits in one batch) and its float64
copy. The record holds the median and the largest of each over digits and logits, with the command, threads,
machine and date. The bound holds for every summation order and every point of the ball, so it must exceed the
error at every digit; the script exits 1 where it does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import allowance  # noqa: E402
import checkpoints  # noqa: E402
import cli  # noqa: E402
from checkpoints import Expected  # noqa: E402
from lipschitz import Ball  # noqa: E402
from measure_recipe import training_metrics  # noqa: E402  (this folder is the script's sys.path[0])
from mnist_data import PIXEL_RANGE, load_mnist  # noqa: E402
from models import in_float64  # noqa: E402

BLOCK = 500  # digits per float64 walk: bounds memory, not the result


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/mnist"))
    parser.add_argument("--json", type=Path, required=True, metavar="FILE")
    cli.add_architecture_flags(parser)
    args = parser.parse_args()
    cli.check_output_file(args.json, "--json")
    checkpoint = checkpoints.load_checkpoint(args.checkpoint, Expected(args.activation, args.group_size, args.hidden))
    model = checkpoint.model.eval()
    metrics = training_metrics(args.checkpoint, checkpoint.original)
    (test,) = load_mnist(args.data_dir, splits=("test",), allow_download=False)
    ball = Ball(metrics["norm"], metrics["cert_magnitude"], PIXEL_RANGE)
    model64 = in_float64(model)
    x32 = test.images.float()
    error = (model(x32).double() - model64(x32.double())).abs()
    bound = torch.cat([allowance.logit_allowance(model64, block, ball) for block in x32.double().split(BLOCK)])
    record = {
        **cli.provenance("scripts/measure_allowance.py"),
        "checkpoint": args.checkpoint.name, "digits": len(test.labels), "norm": ball.norm, "radius": ball.eps,
        "allowance_median": bound.median().item(), "allowance_max": bound.max().item(),
        "error_median": error.median().item(), "error_max": error.max().item(),
        "logits_with_error_above_allowance": int((error > bound).sum()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    checkpoints.write_json(args.json, record)
    print(f"{args.checkpoint.name}: allowance median {record['allowance_median']:.2e}, largest "
          f"{record['allowance_max']:.2e}; error at the digits median {record['error_median']:.1e}, largest "
          f"{record['error_max']:.1e}")
    if record["logits_with_error_above_allowance"]:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
