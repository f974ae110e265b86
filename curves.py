"""Radius curves: certified accuracy per method against the radius, as CSV and as a plot.

`certify.py CKPT --eps ...` writes one curve (CSV and PNG). This script draws
several saved curves side by side, one panel each:

    python curves.py outputs/curves_groupsort.csv outputs/curves_relu.csv \\
        --titles GroupSort ReLU --out outputs/radius_curves.png

The attack's empirical robust accuracy, when measured, is drawn as the upper
curve: no certificate can exceed it, so the gap between the two is how far the
certificates are from the truth (at most).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import checkpoints
import cli
from attacks import ATTACKS
from errors import Failure
from lipschitz import NORM_NAMES
STYLES = {  # colour and marker per method; the attack is the dashed black upper curve
    "global": ("tab:blue", "o"),
    "pairwise": ("tab:orange", "s"),
    "margin": ("tab:green", "^"),
    "ibp": ("tab:red", "D"),
}


class CurveError(Failure):
    """A curve file is missing or malformed."""


@dataclass(frozen=True)
class Curve:
    """Accuracies in percent at each radius: clean, certified per method, and the attack's (or None)."""

    norm: str
    eps: list[float]
    clean: list[float]
    certified: dict[str, list[float]]
    robust: list[float] | None = None
    attack: str = "pgd"  # the attack behind `robust`, its column's name

    @classmethod
    def from_rows(cls, norm: str, rows: list, methods: tuple[str, ...]) -> Curve:
        """From `certify.Row`s, one per radius."""
        attacked = rows[0].robust is not None
        return cls(norm, [r.eps for r in rows], [r.clean for r in rows],
                   {m: [r.certified[m] for r in rows] for m in methods},
                   [r.robust for r in rows] if attacked else None, rows[0].attack if attacked else "pgd")


def write_csv(path: Path, curve: Curve) -> None:
    """Columns: norm, eps, clean, one per method, and the attack's (apgd or pgd) when attacked."""
    header = ["norm", "eps", "clean", *curve.certified] + ([curve.attack] if curve.robust is not None else [])
    rows = [header]
    for i, eps in enumerate(curve.eps):
        values = [curve.clean[i], *(v[i] for v in curve.certified.values())]
        if curve.robust is not None:
            values.append(curve.robust[i])
        rows.append([curve.norm, repr(eps), *(f"{v:.3f}" for v in values)])
    checkpoints.write_csv(path, rows)


def read_csv(path: Path) -> Curve:
    """A curve written by `write_csv`."""
    try:
        with path.open(newline="") as stream:
            rows = list(csv.DictReader(stream))
    except OSError as err:
        raise CurveError(f"cannot read curve {path}: {err.strerror or err}") from None
    if not rows or not {"norm", "eps", "clean"} <= set(rows[0]):
        raise CurveError(f"{path} is not a radius-curve CSV written by certify.py --eps")
    attacks = [name for name in rows[0] if name in ATTACKS]
    methods = [name for name in rows[0] if name not in ("norm", "eps", "clean", *ATTACKS)]
    try:
        number = lambda name: [float(row[name]) for row in rows]  # noqa: E731
        return Curve(rows[0]["norm"], number("eps"), number("clean"), {m: number(m) for m in methods},
                     number(attacks[0]) if attacks else None, attacks[0] if attacks else "pgd")
    except (TypeError, ValueError):
        raise CurveError(f"{path} holds a value that is not a number") from None


def plot(panels: list[tuple[str, Curve]], path: Path) -> None:
    """One panel per (title, curve), side by side, saved as an image (PNG by the suffix)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no display needed

    figure = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for ax, (title, curve) in zip(axes, panels):
        for method, values in curve.certified.items():
            colour, marker = STYLES.get(method, ("tab:gray", "x"))
            ax.plot(curve.eps, values, color=colour, marker=marker, markersize=4, label=f"certified: {method}")
        if curve.robust is not None:
            ax.plot(curve.eps, curve.robust, color="black", linestyle="--", label=f"{curve.attack.upper()} robust (upper bound)")
        ax.axhline(curve.clean[0], color="gray", linestyle=":", linewidth=1, label="clean")
        ax.set_title(title)
        ax.set_xlabel(f"{NORM_NAMES.get(curve.norm, curve.norm)} radius ε (pixels in [0, 1])")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(loc="lower left", fontsize="small")
    checkpoints.atomic_write(path, lambda stream: figure.savefig(stream, format=path.suffix[1:] or "png", dpi=120))


def parse_args(argv: list[str] | None = None):
    parser = cli.Parser(description="Plot radius curves saved by certify.py --eps, one panel per file.")
    parser.add_argument("csv", type=Path, nargs="+", help="curve CSVs written by certify.py --eps")
    parser.add_argument("--titles", nargs="+", default=None, help="panel titles (default: the file names)")
    parser.add_argument("--out", type=Path, default=Path("outputs/radius_curves.png"),
                        help="image to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.titles is not None and len(args.titles) != len(args.csv):
        raise cli.UsageError(f"{len(args.titles)} titles for {len(args.csv)} curves")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    titles = args.titles or [path.stem for path in args.csv]
    plot([(title, read_csv(path)) for title, path in zip(titles, args.csv)], args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    cli.run(main)
