"""The documents' results tables, generated from the committed measurements in results/, never typed.

    python scripts/report.py            # rewrite every generated table in README.md and docs/*.md
    python scripts/report.py --check    # exit 1, naming the table, where a document differs from its results

A generated table sits between `<!-- report:NAME -->` and `<!-- report:NAME:end -->` in a document;
NAME is one of `TABLES`, each a function of the results folder that returns the table's Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/usage.md", "docs/results.md")
ACTIVATIONS = (("groupsort", "GroupSort (groups of 4)"), ("maxmin", "MaxMin"), ("fullsort", "FullSort"),
               ("relu", "ReLU"))


def wasserstein_table(results: Path) -> str:
    """The three tasks against the four critics: the certified lower bound of W1 and the seconds it took."""
    rows = ["| task (true W1 = 1) | " + " | ".join(name for _, name in ACTIVATIONS) + " |",
            "| --- |" + " --- |" * len(ACTIVATIONS)]
    for task in ("line", "circles", "sphere"):
        cells = []
        for activation, _ in ACTIVATIONS:
            run = json.loads((results / "wasserstein" / f"{task}_{activation}.json").read_text())
            bound = math.floor(run["certified_lower_bound"] * 10**4) / 10**4  # a lower bound: shown rounded down
            cells.append(f"{bound:.4f} ({run['seconds']:.0f} s)")
        rows.append(f"| `{task}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def gradient_norms_table(results: Path) -> str:
    """Per net: its proved L2 bound, and the median and 1 % / 99 % quantiles of both gradient ratios."""
    run = json.loads((results / "gradient_norms.json").read_text())
    rows = ["| net | proved L2 bound | ‖J(x)‖₂ / bound: median (1 %, 99 %) | top-2 margin's gradient / bound: median (1 %, 99 %) |",
            "| --- | --- | --- | --- |"]
    for title, net in run["nets"].items():
        cells = [f"{net[kind]['quantiles']['0.5']:.4f} ({net[kind]['quantiles']['0.01']:.4f}, "
                 f"{net[kind]['quantiles']['0.99']:.4f})" for kind in ("jacobian", "margin")]
        rows.append(f"| {title} | {net['proved_bound']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[Path], str]] = {"wasserstein": wasserstein_table, "gradient-norms": gradient_norms_table}
MARKED = re.compile(r"(<!-- report:([\w-]+) -->\n)(.*?)(<!-- report:\2:end -->)", re.S)


def regenerate(text: str, results: Path) -> str:
    """`text` with every marked table replaced by what its function makes of `results`."""
    def table(match: re.Match[str]) -> str:
        name = match[2]
        if name not in TABLES:
            raise SystemExit(f"error: unknown generated table {name!r}: known are {', '.join(TABLES)}")
        return match[1] + TABLES[name](results) + match[4]
    return MARKED.sub(table, text)


def stale(root: Path = REPO, results: Path | None = None) -> list[str]:
    """The generated tables, as 'document: table', whose text differs from their results."""
    results = results or root / "results"
    found = []
    for document in DOCUMENTS:
        text = (root / document).read_text()
        for match in MARKED.finditer(text):
            if regenerate(match[0], results) != match[0]:
                found.append(f"{document}: {match[2]}")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which tables differ from their results")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        if differ:
            raise SystemExit("error: tables differ from results/ (run python scripts/report.py): " + ", ".join(differ))
        print("every generated table matches results/")
        return
    for document in DOCUMENTS:
        path = REPO / document
        text = path.read_text()
        new = regenerate(text, REPO / "results")
        if new != text:
            path.write_text(new)
            print(f"rewrote {document}")


if __name__ == "__main__":
    main()
