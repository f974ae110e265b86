"""Does every layer keep the gradient's norm? The top singular value of each test digit's input-output Jacobian,
and the gradient norm of its top-2 margin, against the network's proved L2 bounds, several checkpoints side by side.

    python scripts/gradient_norms.py A.p B.p C.p --titles "orthonormal MaxMin" "orthonormal ReLU" unconstrained \\
        --data-dir ../shared/mnist --limit 1000 --out docs/gradient_norms.png --json results/gradient_norms.json

For each checkpoint and digit x: s(x) = ||J(x)||_2, J the 10 x 784 Jacobian of the logits in pixels (float64,
the stored weights), over the proved bound of the whole logit vector (`certified_logit_bounds`); and the
gradient norm of the margin f_a - f_b of the two largest logits over the proved bound of that gap, the
quantity the `margin` certificate divides by. A network whose every layer preserves the gradient norm
reaches its bounds almost everywhere (Anil, Lucas & Grosse 2019). Both ratios are drawn as histograms, one
column per net; each panel, the printed table and the JSON give the share of digits within 1 % of the bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoints  # noqa: E402
import cli  # noqa: E402
from mnist_data import load_mnist  # noqa: E402
from models import LipschitzMLP, in_float64  # noqa: E402

NEAR = 0.99  # a digit keeps the norm when its ratio is at least NEAR
LOW = 0.75  # the histograms' left end; a lower ratio is counted in the first bin


def gradient_ratios(model: LipschitzMLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row x, in float64 (the stored float32 weights are exact there): ||J(x)||_2 over the proved bound
    of the whole logit vector, and ||grad (f_a - f_b)(x)||_2 over the proved bound of that gap, a and b the
    two largest logits at x."""
    model64 = in_float64(model)
    bounds = model64.certified_logit_bounds("l2")
    x = x.double()
    jacobians = torch.func.vmap(torch.func.jacrev(lambda row: model64(row[None])[0]))(x).detach()
    top, second = model64(x).detach().topk(2, dim=1).indices.unbind(1)
    rows = torch.arange(len(x))
    margin = torch.linalg.vector_norm(jacobians[rows, top] - jacobians[rows, second], dim=1)
    return (torch.linalg.matrix_norm(jacobians, ord=2) / float(bounds.output),
            margin / bounds.per_gap[top, second])


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
    x = test.images[:args.limit].flatten(1)
    figure = Figure(figsize=(4.2 * len(models), 6.4), layout="constrained")
    axes = figure.subplots(2, len(models), squeeze=False, sharey="row")
    summary = {}
    print(f"{'net':<24} {'proved L':>9} {'median ||J||/L':>15} {'>= 0.99':>8} {'median margin':>14} {'>= 0.99':>8}")
    for column, title, path, model in zip(axes.T, titles, args.checkpoints, models):
        whole, margin = gradient_ratios(model, x)
        entry = {"checkpoint": str(path), "proved_bound": float(model.certified_logit_bounds("l2").output)}
        for name, ratio, ax, label in (("jacobian", whole, column[0], "||J(x)||_2 / proved bound of the logits"),
                                       ("margin", margin, column[1], "||grad(f_a - f_b)||_2 / proved bound of the gap")):
            share = float((ratio >= NEAR).double().mean())
            entry[name] = {"share_within_1_percent": share,
                           "quantiles": {str(q): float(ratio.quantile(q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}}
            ax.hist(ratio.clamp(min=LOW).numpy(), bins=50, range=(LOW, 1), color="tab:blue")  # lower ones at LOW
            ax.set_title(f"{title}\n{100 * share:.1f} % within 1 % of the bound", fontsize="medium")
            ax.set_xlabel(label, fontsize="small")
        summary[title] = entry
        print(f"{title:<24} {entry['proved_bound']:>9.4f} {float(whole.median()):>15.4f} "
              f"{100 * entry['jacobian']['share_within_1_percent']:>7.1f}% {float(margin.median()):>14.4f} "
              f"{100 * entry['margin']['share_within_1_percent']:>7.1f}%")
    for row in axes[:, 0]:
        row.set_ylabel(f"digits (first {len(x)} of the test set)", fontsize="small")
    checkpoints.atomic_write(args.out, lambda stream: figure.savefig(stream, format=args.out.suffix[1:] or "png",
                                                                     dpi=120))
    print(f"wrote {args.out}")
    if args.json is not None:
        checkpoints.write_json(args.json, {"limit": len(x), "near": NEAR, "nets": summary,
                                           **cli.provenance("scripts/gradient_norms.py", argv)})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    cli.run(main)
