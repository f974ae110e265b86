"""Does every layer keep the gradient's norm? The top singular value of each test digit's input-output Jacobian,
against the network's proved L2 Lipschitz bound, for several checkpoints side by side.

    python scripts/gradient_norms.py A.p B.p C.p --titles "orthonormal MaxMin" "orthonormal ReLU" unconstrained \\
        --data-dir ../shared/mnist --limit 1000 --out docs/gradient_norms.png --json results/gradient_norms.json

For each checkpoint and digit x, s(x) = ||J(x)||_2, J the 10 x 784 Jacobian of the logits in pixels (float64,
the stored weights). It is at most the proved bound L of the whole logit vector (`certified_logit_bounds`); a
network whose every layer preserves the gradient norm has s(x) = L almost everywhere (Anil, Lucas & Grosse
2019). The histograms of s(x) / L are drawn side by side; each panel, the printed table and the JSON give the
share of digits with s(x) >= 0.99 L.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoints  # noqa: E402
import cli  # noqa: E402
from mnist_data import load_mnist  # noqa: E402
from models import LipschitzMLP, in_float64  # noqa: E402

NEAR = 0.99  # a digit keeps the norm when s(x) >= NEAR * L


def jacobian_norms(model: LipschitzMLP, x: torch.Tensor) -> torch.Tensor:
    """||J(x)||_2 for every row x, in float64 (the stored float32 weights are exact there)."""
    model64 = in_float64(model)
    jacobians = torch.func.vmap(torch.func.jacrev(lambda row: model64(row[None])[0]))(x.double())
    return torch.linalg.matrix_norm(jacobians, ord=2)


def parse_args(argv: list[str] | None = None):
    parser = cli.Parser(description="Top singular value of each digit's Jacobian against the proved L2 bound.")
    parser.add_argument("checkpoints", type=Path, nargs="+", help="saved models")
    parser.add_argument("--titles", nargs="+", default=None, help="panel titles (default: the file names)")
    parser.add_argument("--limit", type=cli.positive_int, default=1000, help="first N test digits (default: 1000)")
    parser.add_argument("--out", type=Path, default=Path("outputs/gradient_norms.png"), help="the figure")
    parser.add_argument("--json", type=Path, default=None, help="also write the shares and quantiles here")
    cli.add_data_flag(parser)
    args = parser.parse_args(argv)
    if args.titles is not None and len(args.titles) != len(args.checkpoints):
        raise cli.UsageError(f"{len(args.titles)} titles for {len(args.checkpoints)} checkpoints")
    for flag, path in (("--out", args.out), ("--json", args.json)):
        if path is not None:
            cli.check_output_file(path, flag)
    return args


def main(argv: list[str] | None = None) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display needed

    args = parse_args(argv)
    titles = args.titles or [path.stem for path in args.checkpoints]
    models = [checkpoints.load_checkpoint(path).model for path in args.checkpoints]
    (test,) = load_mnist(args.data_dir, ("test",), allow_download=False)
    x = test.x[:args.limit].flatten(1)
    figure = Figure(figsize=(4.2 * len(models), 3.4), layout="constrained")
    axes = figure.subplots(1, len(models), squeeze=False, sharey=True)[0]
    summary = {}
    print(f"{'net':<28} {'proved L':>10} {'median s/L':>11} {'share >= 0.99 L':>16}")
    for ax, title, path, model in zip(axes, titles, args.checkpoints, models):
        bound = float(model.certified_logit_bounds("l2").output)
        ratio = jacobian_norms(model, x) / bound
        share = float((ratio >= NEAR).double().mean())
        summary[title] = {"checkpoint": str(path), "proved_bound": bound, "share_within_1_percent": share,
                          "quantiles": {str(q): float(ratio.quantile(q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}}
        print(f"{title:<28} {bound:>10.4f} {float(ratio.median()):>11.4f} {100 * share:>15.2f}%")
        ax.hist(ratio.numpy(), bins=50, range=(0, 1), color="tab:blue")
        ax.set_title(f"{title}\n{100 * share:.1f} % of digits within 1 % of the bound", fontsize="medium")
        ax.set_xlabel("||J(x)||_2 / proved L2 bound")
    axes[0].set_ylabel(f"digits (first {len(x)} of the test set)")
    checkpoints.atomic_write(args.out, lambda stream: figure.savefig(stream, format=args.out.suffix[1:] or "png",
                                                                     dpi=120))
    print(f"wrote {args.out}")
    if args.json is not None:
        checkpoints.write_json(args.json, {
            "limit": len(x), "near": NEAR, "nets": summary, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "command": " ".join(["python scripts/gradient_norms.py", *(argv if argv is not None else sys.argv[1:])])})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    cli.run(main)
