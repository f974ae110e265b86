"""Certificate rules, clean and certified accuracy, and a CLI that certifies a saved model.

    python certify.py outputs/mnist_groupsort.p --cert_magnitude 0.1

prints the same two lines as the end of `train_mnist.py`. Beside them:

    python certify.py CKPT --method all --attack pgd          # one table: every method, and PGD
    python certify.py CKPT --norm l2 --cert_magnitude 1.58    # another input norm
    python certify.py CKPT --method all --eps 0 0.05 0.1      # radius curves: CSV and PNG
    python certify.py CKPT --method all --per-example r.csv   # certified radius of every example

Methods, each sound in the input norm p (pixel units):
  global    f_y - f_j > eps * K for every j != y, one constant K for all pairs (the demo's rule);
  pairwise  f_y - f_j > eps * (L_y + L_j);
  margin    f_y - f_j > eps * M_yj, M_yj a bound of the difference f_y - f_j itself;
  ibp       interval bound propagation over the ball, cut to the pixel range [0, 1].
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import cli
import lipschitz
from mnist_data import PIXEL_RANGE, Split, load_mnist
from models import LipschitzMLP, LogitBounds, load_checkpoint

EVAL_BATCH = 10_000
METHODS = ("global", "pairwise", "margin", "ibp")
LIPSCHITZ_METHODS = ("global", "pairwise", "margin")
IBP_BISECTION_STEPS = 20  # the IBP radius to within upper / 2**20
NORM_NAMES = {"linf": "L-inf", "l2": "L2", "l1": "L1"}
# Where IBP and the attack look: valid images only (the ball cut to [0, 1]), or the whole ball.
DOMAINS = {"pixels": PIXEL_RANGE, "ball": None}
EXIT_UNSOUND = 1  # an attack broke a certified example


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit, per row (zero on a tie)."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def certified_linf_global(
    logits: torch.Tensor, labels: torch.Tensor, logit_bounds: torch.Tensor, eps: float
) -> torch.Tensor:
    """Per example: correct, and no x' with ||x' - x||_inf <= eps changes the prediction.

    The demo's rule: margin > eps * 2 * max_k L_k. Sound because every logit
    difference moves by at most 2 max_k L_k * eps inside the ball
    (`lipschitz.linf_margin_bound`), so the top logit stays on top. Strict, so a
    tie is never certified, not even at eps = 0.
    """
    correct = logits.argmax(dim=1) == labels
    return correct & (top2_margin(logits) > eps * lipschitz.linf_margin_bound(logit_bounds))


def lp_pair_thresholds(bounds: LogitBounds, method: str) -> torch.Tensor:
    """T with |(f_y - f_j)(x) - (f_y - f_j)(x')| <= T[y, j] ||x - x'||_p, for a Lipschitz method.

    global:   one constant for every pair, `lipschitz.lp_margin_bound`;
    pairwise: min(L_y + L_j, global), as f_y - f_j moves by at most L_y + L_j;
    margin:   min(M_yj, pairwise), M_yj the bound of f_y - f_j itself.
    Each is a minimum of sound bounds, hence sound; and each is at most the
    one before, so margin certifies every example that pairwise certifies, and
    pairwise every one that global certifies.
    """
    count = len(bounds.logits)
    shared = lipschitz.lp_margin_bound(bounds.logits, bounds.output, bounds.norm).expand(count, count)
    if method == "global":
        return shared
    pairwise = torch.minimum(bounds.logits[:, None] + bounds.logits[None, :], shared)
    if method == "pairwise":
        return pairwise
    if method == "margin":
        return torch.minimum(bounds.differences, pairwise)
    raise ValueError(f"unknown Lipschitz method {method!r}: choose one of {', '.join(LIPSCHITZ_METHODS)}")


def _label_gaps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_y - f_j for every j, mask of j != y), per example."""
    gaps = logits.gather(1, labels[:, None]) - logits
    others = torch.arange(logits.shape[1], device=logits.device) != labels[:, None]
    return gaps, others


def certified_lp(
    logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor, eps: float | torch.Tensor
) -> torch.Tensor:
    """Per example: correct, and f_y - f_j > eps * T[y, j] for every j != y.

    Sound: inside ||x' - x||_p <= eps each difference f_y - f_j drops by at most
    eps * T[y, j] < f_y - f_j, so it stays positive and y stays the prediction.
    Strict, so ties never certify, and eps = 0 certifies exactly the strictly
    correct examples. `eps` is one radius or one per example.
    """
    gaps, others = _label_gaps(logits, labels)
    if isinstance(eps, torch.Tensor) and eps.ndim:
        eps = eps[:, None]
    beaten = (gaps > eps * thresholds[labels]) | ~others
    return (logits.argmax(dim=1) == labels) & beaten.all(dim=1)


def lp_certified_radius(logits: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """The certificate's radius in closed form: min over j != y of (f_y - f_j) / T[y, j].

    `certified_lp` certifies at every eps below it. 0 when the example is not
    strictly correct; inf when every threshold is 0 (the differences are constant).
    """
    gaps, others = _label_gaps(logits, labels)
    limits = thresholds[labels]
    ratio = torch.where(limits > 0, gaps / limits, torch.full_like(gaps, float("inf")))
    radius = ratio.masked_fill(~others, float("inf")).amin(dim=1)
    strictly_correct = certified_lp(logits, labels, thresholds, 0.0)
    return torch.where(strictly_correct, radius, torch.zeros_like(radius))


def certified_ibp(
    model: LipschitzMLP,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    norm: str,
    domain: tuple[float, float] | None = PIXEL_RANGE,
) -> torch.Tensor:
    """Per example: strictly correct, and IBP's lower bound of f_y - f_j over the ball is > 0 for every j != y.

    The ball ||x' - x||_p <= eps is cut to `domain` (the pixel range by
    default; None for the whole ball), so the certificate covers the valid
    images in the ball. At eps = 0 the ball is the point x, whose logits are
    known: exactly the strictly correct examples are certified.
    """
    logits = model(x)
    strictly_correct = certified_lp(logits, labels, torch.zeros(logits.shape[1], logits.shape[1],
                                                                dtype=logits.dtype, device=logits.device), 0.0)
    lower = model.ibp_pair_lower(x, eps, norm, domain)
    rows = lower[torch.arange(len(labels), device=labels.device), labels]
    _, others = _label_gaps(logits, labels)
    proved = ((rows > 0) | ~others).all(dim=1)
    point = torch.as_tensor(eps, device=x.device).reshape(-1).expand(len(x)) == 0
    return strictly_correct & (proved | point)


def ibp_certified_radius(
    model: LipschitzMLP,
    x: torch.Tensor,
    labels: torch.Tensor,
    norm: str,
    upper: float,
    domain: tuple[float, float] | None = PIXEL_RANGE,
    steps: int = IBP_BISECTION_STEPS,
) -> torch.Tensor:
    """The largest eps in [0, upper] found by bisection at which `certified_ibp` holds, per example.

    Bisection is valid because IBP's intervals only grow with eps, so the set of
    certified radii is an interval [0, r). Only radii that IBP certified are
    reported, so the result is a lower bound on r: certified at every eps up to it.
    0 when the example is not strictly correct.
    """
    low = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    high = torch.full_like(low, upper)
    low = torch.where(certified_ibp(model, x, labels, high, norm, domain), high, low)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = certified_ibp(model, x, labels, middle, norm, domain)
        low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)
    return low


def domain_diameter(in_features: int, norm: str) -> float:
    """The p-norm diameter of the pixel box [0, 1]^d: 1 (linf), sqrt(d) (l2), d (l1).

    Every valid image is within it of every other, so a certificate at this radius
    (within the pixel range) covers the whole domain.
    """
    return float(lipschitz.lp_vector_norm(torch.ones(in_features, dtype=torch.float64), norm))


@dataclass(frozen=True)
class Accuracy:
    """Clean and certified accuracy on a split, in percent."""

    clean: float
    certified: float

    def lines(self) -> str:
        return (
            f"test acc on clean examples (%): {self.clean:.3f}\n"
            f"test certified on clean examples (%): {self.certified:.3f}"
        )


def _batches(split: Split, batch_size: int):
    for start in range(0, len(split), batch_size):
        yield split.images[start : start + batch_size], split.labels[start : start + batch_size]


@torch.no_grad()
def certify_split(
    model: LipschitzMLP,
    split: Split,
    eps: float,
    methods: tuple[str, ...],
    norm: str = "linf",
    batch_size: int = EVAL_BATCH,
    domain: tuple[float, float] | None = PIXEL_RANGE,
) -> dict[str, torch.Tensor]:
    """Per-example masks: "clean" (argmax is the label) and one per method (certified at eps).

    The Lipschitz methods certify the whole ball; ibp the ball cut to `domain`.
    """
    lipschitz.check_norm(norm)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    was_training = model.training
    model.eval()
    thresholds = {}
    if set(methods) & set(LIPSCHITZ_METHODS):
        bounds = model.lp_bounds(norm)
        thresholds = {m: lp_pair_thresholds(bounds, m) for m in methods if m in LIPSCHITZ_METHODS}
    masks: dict[str, list[torch.Tensor]] = {"clean": [], **{m: [] for m in methods}}
    for x, y in _batches(split, batch_size):
        logits = model(x)
        masks["clean"].append(logits.argmax(dim=1) == y)
        for method in methods:
            if method == "ibp":
                masks[method].append(certified_ibp(model, x, y, eps, norm, domain))
            else:
                masks[method].append(certified_lp(logits, y, thresholds[method], eps))
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in masks.items()}


@torch.no_grad()
def certified_radii(
    model: LipschitzMLP,
    split: Split,
    methods: tuple[str, ...],
    norm: str,
    batch_size: int = EVAL_BATCH,
    domain: tuple[float, float] | None = PIXEL_RANGE,
) -> dict[str, torch.Tensor]:
    """Per example: "prediction", "top2_margin" and each method's certified radius (keyed by method).

    Closed form for the Lipschitz methods, bisection up to the domain's
    diameter for ibp (see `ibp_certified_radius`).
    """
    was_training = model.training
    model.eval()
    bounds = model.lp_bounds(norm) if set(methods) & set(LIPSCHITZ_METHODS) else None
    upper = domain_diameter(model.config.in_features, norm)
    columns: dict[str, list[torch.Tensor]] = {"prediction": [], "top2_margin": [], **{m: [] for m in methods}}
    for x, y in _batches(split, batch_size):
        logits = model(x)
        columns["prediction"].append(logits.argmax(dim=1))
        columns["top2_margin"].append(top2_margin(logits))
        for method in methods:
            if method == "ibp":
                columns[method].append(ibp_certified_radius(model, x, y, norm, upper, domain))
            else:
                columns[method].append(lp_certified_radius(logits, y, lp_pair_thresholds(bounds, method)))
    model.train(was_training)
    return {name: torch.cat(parts) for name, parts in columns.items()}


def evaluate(
    model: LipschitzMLP,
    split: Split,
    eps: float,
    batch_size: int = EVAL_BATCH,
    method: str = "global",
    norm: str = "linf",
) -> Accuracy:
    """Clean and certified (radius eps in the p-norm `norm`, rule `method`) accuracy of `model` on `split`."""
    masks = certify_split(model, split, eps, (method,), norm, batch_size)
    n = len(split)
    return Accuracy(100.0 * masks["clean"].sum().item() / n, 100.0 * masks[method].sum().item() / n)


def percent(mask: torch.Tensor) -> float:
    return 100.0 * mask.sum().item() / max(1, mask.numel())


@dataclass(frozen=True)
class Row:
    """One radius: clean accuracy, certified accuracy per method, and the attack (all in percent)."""

    eps: float
    clean: float
    certified: dict[str, float]
    robust: float | None = None  # PGD's empirical robust accuracy
    broken: dict[str, int] | None = None  # certified examples that PGD broke: must be 0


def measure(
    model: LipschitzMLP,
    split: Split,
    eps: float,
    methods: tuple[str, ...],
    norm: str,
    attack: str = "none",
    steps: int = 50,
    restarts: int = 5,
    seed: int = 0,
    batch_size: int = EVAL_BATCH,
    domain: tuple[float, float] | None = PIXEL_RANGE,
) -> Row:
    """Certify every method at eps and, with attack "pgd", attack every example (certified ones too).

    IBP and the attack both work in the ball cut to `domain`; the Lipschitz
    certificates hold in the whole ball, which contains it.
    """
    import attacks  # the attack needs autograd; plain certification does not

    masks = certify_split(model, split, eps, methods, norm, batch_size, domain)
    certified = {m: percent(masks[m]) for m in methods}
    if attack == "none":
        return Row(eps, percent(masks["clean"]), certified)
    model.eval()
    broken, _ = attacks.pgd(model, split.images, split.labels, eps, norm, steps, restarts,
                            domain=domain, seed=seed, batch_size=batch_size)
    return Row(eps, percent(masks["clean"]), certified, percent(~broken),
               {m: int((masks[m] & broken).sum()) for m in methods})


def table(rows: list[Row], methods: tuple[str, ...], norm: str, examples: int, domain: str = "pixels") -> str:
    """One radius: a row per method. Several radii: a row per radius, certified % per method."""
    attacked = rows[0].robust is not None
    where = ""
    if attacked or "ibp" in methods:
        where = "; ibp and pgd " + ("within the pixel range [0, 1]" if domain == "pixels" else "in the whole ball")
    if len(rows) == 1:
        row = rows[0]
        lines = [f"{NORM_NAMES[norm]} radius {row.eps:g}, {examples} test examples{where}",
                 f"{'method':<10}{'clean (%)':>11}{'certified (%)':>15}"
                 + (f"{'pgd robust (%)':>16}{'broken by pgd':>15}" if attacked else "")]
        for method in methods:
            line = f"{method:<10}{row.clean:>11.3f}{row.certified[method]:>15.3f}"
            if attacked:
                line += f"{row.robust:>16.3f}{row.broken[method]:>15d}"
            lines.append(line)
        return "\n".join(lines)
    lines = [f"{NORM_NAMES[norm]} certified accuracy (%) by radius, {examples} test examples, "
             f"clean {rows[0].clean:.3f}{where}",
             f"{'eps':<8}" + "".join(f"{m:>10}" for m in methods) + (f"{'pgd':>10}{'broken':>8}" if attacked else "")]
    for row in rows:
        line = f"{row.eps:<8g}" + "".join(f"{row.certified[m]:>10.3f}" for m in methods)
        if attacked:
            line += f"{row.robust:>10.3f}{sum(row.broken.values()):>8d}"
        lines.append(line)
    return "\n".join(lines)


def write_per_example(path: Path, split: Split, radii: dict[str, torch.Tensor], methods: tuple[str, ...],
                      norm: str) -> None:
    """One row per example: index, label, prediction, top-2 margin, radius per method (in `norm`, pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [radii["prediction"].tolist(), radii["top2_margin"].tolist(), *(radii[m].tolist() for m in methods)]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["index", "label", "prediction", "top2_margin", *(f"{norm}_radius_{m}" for m in methods)])
        for index, (label, *values) in enumerate(zip(split.labels.tolist(), *columns)):
            prediction, margin, *radius = values
            writer.writerow([index, label, prediction, f"{margin:.6g}", *(f"{r:.6g}" for r in radius)])


def parse_args(argv: list[str] | None = None):
    parser = cli.Parser(description="Certify a saved Lipschitz MLP on the MNIST test set.")
    parser.add_argument("checkpoint", type=Path, help="a checkpoint from train_mnist.py or the original demo")
    parser.add_argument("--cert_magnitude", "--cert-magnitude", type=cli.nonnegative_float, default=None,
                        help="radius in pixel units, in --norm (default: 0.1)")
    parser.add_argument("--method", choices=(*METHODS, "all"), default="global",
                        help="certificate rule; all prints a table of every rule (default: %(default)s)")
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
    parser.add_argument("--attack", choices=("none", "pgd"), default="none",
                        help="also attack every example: empirical robust accuracy (default: %(default)s)")
    parser.add_argument("--pgd-steps", type=cli.positive_int, default=50, help="PGD steps (default: %(default)s)")
    parser.add_argument("--pgd-restarts", type=cli.positive_int, default=5,
                        help="PGD restarts, the first from the input itself (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts (default: %(default)s)")
    parser.add_argument("--limit", type=cli.positive_int, default=None, metavar="N",
                        help="use only the first N test examples")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder holding MNIST/raw (default: %(default)s)")
    cli.add_architecture_flags(parser, defaults=False)
    parser.add_argument("--mean", type=float, default=None,
                        help="input normalisation mean; must match a checkpoint's (original demo: 0.1307)")
    parser.add_argument("--std", type=cli.positive_float, default=None,
                        help="input normalisation std; must match a checkpoint's (original demo: 1)")
    cli.add_device_flags(parser)
    args = parser.parse_args(argv)
    if args.eps is not None and args.cert_magnitude is not None:
        raise cli.UsageError("give one radius with --cert_magnitude or several with --eps, not both")
    if args.cert_magnitude is None:
        args.cert_magnitude = 0.1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = cli.pick_device(args.device, args.no_cuda)
    normalisation = None if args.mean is None and args.std is None else (
        0.1307 if args.mean is None else args.mean, 1.0 if args.std is None else args.std)
    checkpoint = load_checkpoint(args.checkpoint, args.activation, args.group_size, args.hidden, normalisation)
    (test,) = load_mnist(args.data_dir, splits=("test",))
    if args.limit is not None:
        test = Split(test.images[: args.limit], test.labels[: args.limit])
    model, test = checkpoint.model.to(device), test.to(device)
    methods = METHODS if args.method == "all" else (args.method,)

    domain = DOMAINS[args.domain]
    if args.eps is None and args.method != "all" and args.attack == "none":
        masks = certify_split(model, test, args.cert_magnitude, methods, args.norm, domain=domain)
        print(Accuracy(percent(masks["clean"]), percent(masks[args.method])).lines())
        rows = []
    else:
        rows = [measure(model, test, eps, methods, args.norm, args.attack, args.pgd_steps, args.pgd_restarts,
                        args.seed, domain=domain) for eps in (args.eps or [args.cert_magnitude])]
        print(table(rows, methods, args.norm, len(test), args.domain))
    if args.eps is not None:
        import curves  # matplotlib is needed only here

        curve = curves.Curve.from_rows(args.norm, rows, methods)
        curves.write_csv(args.curves, curve)
        title = f"{args.checkpoint.name} ({model.config.activation}), {len(test)} test examples"
        curves.plot([(title, curve)], args.curves.with_suffix(".png"))
        print(f"wrote {args.curves} and {args.curves.with_suffix('.png')}")
    if args.per_example is not None:
        write_per_example(args.per_example, test.to("cpu"),
                          {k: v.cpu() for k, v in certified_radii(model, test, methods, args.norm,
                                                                  domain=domain).items()},
                          methods, args.norm)
        print(f"wrote {args.per_example}")
    broken = sum(sum(row.broken.values()) for row in rows if row.broken)
    if broken:
        print(f"error: pgd broke {broken} certified examples: a certificate is unsound", file=sys.stderr)
        sys.exit(EXIT_UNSOUND)


if __name__ == "__main__":
    cli.run(main)
