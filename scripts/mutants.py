"""Mutation check of the bound rules: every unsound change to a rule must fail the test suite.

    python scripts/mutants.py            # every mutant; exit 1 if any survives
    python scripts/mutants.py --list     # the mutants, without running them

Each mutant makes one rule unsound: a bound, threshold, spread or radius 2 %
too small (or too large, for a radius), a tie certified, a group maximum
dropped. It is applied to a copy of the tracked files, and the unit tests of the
certificate modules run on it (stopping at the first failure); a mutant that
survives them gets the whole suite. Nothing in the working tree is changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST_TESTS = ["tests/test_rounding.py", "tests/test_lipschitz.py", "tests/test_groupsort.py", "tests/test_models.py",
              "tests/test_ibp.py", "tests/test_certificates.py"]

# (file, exact original text, unsound replacement, what the mutant breaks)
MUTANTS = [
    ("lipschitz.py", "chained = rows.abs() @ unit", "chained = 0.98 * (rows.abs() @ unit)",
     "per-unit bound of a row (the L-inf linear rule |W| b)"),
    ("lipschitz.py", "torch.minimum(chained, lp_dual_norm(rows, norm) * whole)",
     "torch.minimum(chained, 0.98 * lp_dual_norm(rows, norm) * whole)", "Hoelder bound of a row"),
    ("lipschitz.py", "torch.minimum(operator_norm(weight, norm) * whole, by_units)",
     "torch.minimum(0.98 * operator_norm(weight, norm) * whole, by_units)", "whole-vector bound, operator norm"),
    ("lipschitz.py", "by_units = lp_vector_norm(out_unit, norm)", "by_units = 0.98 * lp_vector_norm(out_unit, norm)",
     "whole-vector bound, from the units"),
    ("lipschitz.py", "return torch.linalg.matrix_norm(weight, ord=_OPERATOR_ORD[norm])",
     "return 0.98 * torch.linalg.matrix_norm(weight, ord=_OPERATOR_ORD[norm])", "operator norm"),
    ("lipschitz.py", "return torch.linalg.vector_norm(rows, ord=_DUAL_ORD[norm], dim=-1)",
     "return 0.98 * torch.linalg.vector_norm(rows, ord=_DUAL_ORD[norm], dim=-1)", "dual norm"),
    ("lipschitz.py", '"l2": math.sqrt(2.0)', '"l2": 0.98 * math.sqrt(2.0)', "the sqrt 2 of a gap in l2"),
    ("lipschitz.py", "unit = torch.full((in_features,), scale,", "unit = torch.full((in_features,), 0.98 * scale,",
     "input bound 1/std"),
    ("groupsort.py", "return groups.amax(dim=-1, keepdim=True).expand_as(groups).flatten(-2)", "return bound",
     "GroupSort without its group maximum"),
    ("groupsort.py", '''so lower <= a <= upper gives sort(lower)_k <= sort(a)_k <= sort(upper)_k."""
        return self(lower), self(upper)''', '''so lower <= a <= upper gives sort(lower)_k <= sort(a)_k <= sort(upper)_k."""
        return self(lower) + 0.02 * (self(upper) - self(lower)), self(upper)''', "GroupSort interval's lower end"),
    ("groupsort.py", '''relu(lower) <= relu(a) <= relu(upper)."""
        return self(lower), self(upper)''', '''relu(lower) <= relu(a) <= relu(upper)."""
        return self(lower) + 0.02 * (self(upper) - self(lower)), self(upper)''', "ReLU interval's lower end"),
    ("ibp.py", "spread = radius @ weight.abs().T", "spread = 0.98 * radius @ weight.abs().T",
     "interval spread of a Linear layer"),
    ("ibp.py", "- radius @ rows.abs().T)", "- 0.98 * radius @ rows.abs().T)", "interval spread of the gaps"),
    ("ibp.py", "spread = radius[:, None] * lipschitz.lp_dual_norm", "spread = 0.98 * radius[:, None] * lipschitz.lp_dual_norm",
     "exact range over the p-ball"),
    ("lipschitz.py", "radius = self.radii(x)[:, None]", "radius = 0.98 * self.radii(x)[:, None]", "IBP's input box"),
    ("certificates.py", "shared = 2 * bounds.logits.max()", "shared = 1.96 * bounds.logits.max()",
     "global threshold 2 max L"),
    ("certificates.py", "return torch.minimum(shared, lipschitz.lp_difference_coefficient(bounds.norm) * bounds.output)",
     "return torch.minimum(shared, 0.98 * lipschitz.lp_difference_coefficient(bounds.norm) * bounds.output)",
     "global threshold's output bound in l2 and l1"),
    ("certificates.py", "torch.minimum(bounds.logits[:, None] + bounds.logits[None, :], shared)",
     "torch.minimum(0.98 * (bounds.logits[:, None] + bounds.logits[None, :]), shared)", "pairwise threshold"),
    ("certificates.py", "torch.minimum(bounds.differences, pairwise)", "torch.minimum(0.98 * bounds.differences, pairwise)",
     "margin threshold"),
    ("certificates.py", "beaten = (label_gaps > drop) | ~others", "beaten = (label_gaps >= drop) | ~others",
     "a tie certified (>= for >)"),
    ("certificates.py", "usable / (limits * scale),", "1.02 * usable / (limits * scale),",
     "Lipschitz radius 2 % too large"),
    ("certificates.py", "return ((rows > 0) | ~others).all(dim=1)", "return ((rows >= 0) | ~others).all(dim=1)",
     "IBP certifies a zero lower bound"),
    ("certificates.py", "low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)\n    return low",
     "low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)\n    return high",
     "IBP radius: the bisection's upper end"),
    # Sound in floating point: every allowance for rounding is needed.
    ("rounding.py", "count = weight.shape[1] + 1 + extra_roundings", "count = 2 + extra_roundings",
     "a dot product's rounding bounded as if it had two terms"),
    ("ibp.py", "return (rounding.linear_error(last.weight, last.bias, box.magnitude, box.errors[0], runs_in)",
     "return 0 * (rounding.linear_error(last.weight, last.bias, box.magnitude, box.errors[0], runs_in)",
     "the Lipschitz methods without the float32 allowance"),
    ("ibp.py", "return self.lower - self.allowance", "return self.lower - 0 * self.allowance",
     "IBP without the float32 allowance"),
    ("lipschitz.py", "return (top / bottom).sqrt() * (1 + 4 * rounding.unit_roundoff(f64))",
     "return (top / bottom).sqrt() * (1 - 1e-9)", "spectral norm a relative 1e-9 below its upper bound"),
    ("certificates.py", "if float(written) > value:", "if False:", "radii rounded to nearest, not down"),
    ("ibp.py", "upper = torch.maximum(upper, lower)  # two", "pass  # two", "intervals that invert"),
    # Exact verification: the bounds of what GroupSort compares.
    ("ibp.py", "bound = interval_linear(rows, offsets, lower, upper)[1]",
     "bound = interval_linear(rows, offsets, lower + 0.02 * (upper - lower), upper)[1]",
     "bounds of the differences within a group, from a box 2 % too small"),
    ("milp.py", "bound[i], bound[j] = np.minimum(p[0], p[1]), np.maximum(p[0], p[1])",
     "bound[i], bound[j] = np.maximum(p[0], p[1]), np.minimum(p[0], p[1])",
     "a compare-exchange's difference bounds: min and max rows swapped"),
    ("milp.py", "bound[:, i], bound[:, j] = np.maximum(q[:, 0], q[:, 1]), np.minimum(q[:, 0], q[:, 1])",
     "bound[:, i], bound[:, j] = np.minimum(q[:, 0], q[:, 1]), np.maximum(q[:, 0], q[:, 1])",
     "a compare-exchange's difference bounds: min and max columns swapped"),
    # Deep nets in L2 and L1: the Lipschitz cut of the boxes and the error vector's L2 norm.
    ("ibp.py", "width = (error + reach) * (1 + 4 * u)", "width = 0.98 * (error + reach) * (1 + 4 * u)",
     "a deeper box cut 2 % inside the units' Lipschitz reach"),
    ("rounding.py", "error_norm[:, None] * rows * grow)", "0.98 * error_norm[:, None] * rows * grow)",
     "a unit's carried error 2 % below ||w||_2 times the error vector's L2 norm"),
    ("rounding.py", "out = torch.minimum(out, operator * error_norm +", "out = torch.minimum(out, 0.98 * operator * error_norm +",
     "the error vector's L2 norm 2 % below ||W||_2 times the incoming one"),
]


def copy_tree(target: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the repository, copied under `target`."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def killed(tree: Path, tests: list[str]) -> bool:
    """True when pytest fails on the mutated tree."""
    env = {**os.environ, "MNIST_ROOT": os.environ.get("MNIST_ROOT", str(REPO.parent / "shared" / "mnist"))}
    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                         cwd=tree, capture_output=True, text=True, env=env)
    return run.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", type=int, nargs="+", metavar="N", help="run only these mutants (numbers of --list)")
    args = parser.parse_args()
    if not args.list:
        with tempfile.TemporaryDirectory() as folder:
            copy_tree(Path(folder) / "repo")
            if killed(Path(folder) / "repo", FAST_TESTS):
                sys.exit("the unit tests fail on the unmutated tree: fix them before judging mutants")
    survivors = 0
    chosen = [(n, m) for n, m in enumerate(MUTANTS, 1) if args.only is None or n in args.only]
    for number, (file, original, mutant, what) in chosen:
        if args.list:
            print(f"{number:2d} {file}: {what}")
            continue
        with tempfile.TemporaryDirectory() as folder:
            tree = Path(folder) / "repo"
            copy_tree(tree)
            text = (tree / file).read_text()
            if text.count(original) != 1:
                sys.exit(f"mutant {number} ({what}): its original text is not found exactly once in {file}")
            (tree / file).write_text(text.replace(original, mutant))
            fast = [t for t in FAST_TESTS if (tree / t).exists()]
            verdict = "killed by the unit tests" if killed(tree, fast) else (
                "killed by the whole suite" if killed(tree, ["tests"]) else "SURVIVED")
        survivors += verdict == "SURVIVED"
        print(f"{number:2d} {file}: {what}: {verdict}", flush=True)
    if not args.list:
        print(f"{len(chosen) - survivors} of {len(chosen)} mutants killed")
        sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
