"""Train a peer library's 1-Lipschitz net (deel-torchlip) and save it in the project's checkpoint format.

    pip install --no-deps deel-torchlip==1.0.5     # by hand: the project does not depend on it
    python scripts/compare_torchlip.py --data-dir ../shared/mnist --out outputs/mnist_torchlip.p
    python scripts/measure_recipe.py outputs/mnist_torchlip.p --json results/allowance/torchlip_float32.json
    python scripts/measure_recipe.py outputs/mnist_torchlip.p --json results/allowance/torchlip_float64.json --runs-in float64

The net of issue 24's measurement: 784-1024-1024-10, deel-torchlip's `SpectralLinear` layers (power
iteration, then Bjorck's iteration, in each forward pass) and `GroupSort2`, pixels in [0, 1] with no
normalisation, trained with its `HKRMulticlassLoss` (Serrurier et al. 2021) and Adam. After training,
`vanilla_export` gives plain Linear layers, loaded into a `LipschitzMLP` (GroupSort, groups of 2, which
sorts each pair as GroupSort2 does) and checked to give the same float32 logits on test digits. Its metrics
JSON says L2 at 1.58, so that `measure_recipe.py` certifies it there: the float32 figure and the float64
one (`--runs-in float64`) side by side give what soundness in float32 costs on a net trained elsewhere.
Nothing of the project's training is used.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import checkpoints  # noqa: E402
import cli  # noqa: E402
from mnist_data import load_mnist  # noqa: E402
from models import LipschitzMLP, MLPConfig  # noqa: E402

RADIUS = 1.58  # the L2 radius of the project's L2 recipes


def torchlip() -> ModuleType:
    """The deel.torchlip package, or one line saying how to install it."""
    try:
        import deel.torchlip
    except ImportError:
        raise cli.UsageError("this comparison needs deel-torchlip, which the project does not depend on: "
                             "pip install --no-deps deel-torchlip==1.0.5") from None
    return deel.torchlip


def torchlip_net(hidden: tuple[int, ...]) -> torch.nn.Module:
    """deel-torchlip's Sequential of SpectralLinear and GroupSort2 layers (784-hidden-10)."""
    tl = torchlip()
    widths = (784, *hidden)
    layers: list[torch.nn.Module] = []
    for fan_in, units in zip(widths, widths[1:]):
        layers += [tl.SpectralLinear(fan_in, units), tl.GroupSort2()]
    return tl.Sequential(*layers, tl.SpectralLinear(widths[-1], 10))


def exported(net: torch.nn.Module, hidden: tuple[int, ...]) -> LipschitzMLP:
    """The trained net's plain Linear layers (`vanilla_export`) in a LipschitzMLP with the same arithmetic."""
    plain = [layer for layer in net.vanilla_export() if isinstance(layer, torch.nn.Linear)]
    model = LipschitzMLP(MLPConfig(in_features=784, hidden=hidden, out_features=10, activation="groupsort",
                                   group_size=2, mean=0.0, std=1.0))
    with torch.no_grad():
        for ours, theirs in zip(model.affine_layers(), plain, strict=True):
            ours.weight.copy_(theirs.weight)
            ours.bias.copy_(theirs.bias)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/mnist"))
    parser.add_argument("--out", type=Path, default=Path("outputs/mnist_torchlip.p"))
    parser.add_argument("--hidden", type=cli.widths, default=(1024, 1024), help="default: 1024,1024")
    parser.add_argument("--epochs", type=cli.positive_int, default=5, help="default: 5")
    parser.add_argument("--batch-size", type=cli.positive_int, default=256, help="default: 256")
    parser.add_argument("--lr", type=cli.positive_float, default=1e-3, help="Adam's rate (default: 1e-3)")
    parser.add_argument("--alpha", type=cli.unit_float, default=0.98,
                        help="HKRMulticlassLoss's weight of the hinge against the KR term (default: 0.98)")
    parser.add_argument("--min-margin", type=cli.positive_float, default=2 * RADIUS / math.sqrt(2),
                        help="HKRMulticlassLoss's hinge margin (default: sqrt(2) times 1.58, the margin "
                             "that certifies L2 1.58 for a 1-Lipschitz net)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=cli.positive_int, default=None)
    args = parser.parse_args()
    cli.check_output_file(args.out, "--out")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    net = torchlip_net(args.hidden)
    train, test = load_mnist(args.data_dir, splits=("train", "test"), allow_download=False)
    loss_fn = torchlip().HKRMulticlassLoss(alpha=args.alpha, min_margin=args.min_margin)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        net.train()
        order = torch.randperm(len(train.labels))
        for batch in order.split(args.batch_size):
            target = torch.nn.functional.one_hot(train.labels[batch], 10).float()
            loss = loss_fn(net(train.images[batch]), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s", flush=True)
    seconds = time.perf_counter() - start
    net.eval()
    model = exported(net, args.hidden)
    with torch.no_grad():
        theirs, ours = net(test.images[:1000]), model(test.images[:1000])
    if not torch.allclose(theirs, ours, atol=1e-4):
        sys.exit(f"the exported net's logits differ from deel-torchlip's by {float((theirs - ours).abs().max()):.3g}")
    with torch.no_grad():
        clean = float((model(test.images).argmax(dim=1) == test.labels).double().mean()) * 100
    metrics = {**cli.provenance("scripts/compare_torchlip.py"), "norm": "l2", "cert_magnitude": RADIUS,
               "library": "deel-torchlip 1.0.5", "seed": args.seed, "hidden": list(args.hidden),
               "activation": "groupsort", "loss": f"HKRMulticlassLoss(alpha={args.alpha}, min_margin={args.min_margin:.4f})",
               "epochs": args.epochs, "lr": args.lr, "train_seconds": round(seconds, 1), "clean_accuracy": clean}
    checkpoints.save_checkpoint(args.out, model, metrics)
    print(f"clean {clean:.2f} % after {args.epochs} epochs, {seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
