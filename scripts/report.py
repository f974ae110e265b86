"""The documents' results tables, generated from the committed measurements in results/, never typed.

    python scripts/report.py            # rewrite every generated table in README.md and docs/*.md
    python scripts/report.py --check    # exit 1, naming the table, where a document differs from its results,
                                        # or a figure in the prose beside a table is in no results file

A generated table sits between `<!-- report:NAME -->` and `<!-- report:NAME:end -->` in a document;
NAME is one of `TABLES`, each a function of the results folder that returns the table's Markdown.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wasserstein import TASKS, rounded_down  # noqa: E402  (a lower bound shown rounded down, as wasserstein.py prints it)

DOCUMENTS = ("README.md", "docs/usage.md", "docs/results.md")
ACTIVATIONS = (("groupsort", "GroupSort (groups of 4)"), ("maxmin", "MaxMin"), ("fullsort", "FullSort"),
               ("relu", "ReLU"))


def layers_text(hidden: tuple[int, ...] | list[int]) -> str:
    """Hidden widths as '12 × 8' where they are all one width, else listed."""
    return f"{len(hidden)} × {hidden[0]}" if len(set(hidden)) == 1 else ", ".join(map(str, hidden))


def critic_layers(run: dict, task: str) -> str:
    """The critic's hidden layers and Björck steps where they are not the task's own, and its start where it is a
    sorting network, as the start of a table cell ('12 × 8, 20 Björck steps; '), else nothing."""
    critic, words = run["critic"], []
    hidden = tuple(critic["hidden"])
    if hidden != TASKS[task].hidden:
        words.append(layers_text(hidden))
    if critic["bjorck"]["iterations"] != TASKS[task].bjorck_iterations:
        words.append(f"{critic['bjorck']['iterations']} Björck steps")
    if critic.get("start", "orthogonal") != "orthogonal":
        words.append(f"{critic['start']} start")
    return ", ".join(words) + "; " if words else ""


def wasserstein_table(results: Path) -> str:
    """The three tasks against the four critics: the certified lower bound of W1 and the seconds it took (its
    CPU seconds, every thread, where the record has them), with the critic's layers where they are not the
    task's."""
    rows = ["| task (true W1 = 1) | " + " | ".join(name for _, name in ACTIVATIONS) + " |",
            "| --- |" + " --- |" * len(ACTIVATIONS)]
    for task in ("line", "circles", "sphere"):
        cells = []
        for activation, _ in ACTIVATIONS:
            run = json.loads((results / "wasserstein" / f"{task}_{activation}.json").read_text())
            cpu = f", {run['cpu_seconds']:.0f} s CPU" if "cpu_seconds" in run else ""
            cells.append(f"{rounded_down(run['certified_lower_bound'])} ({critic_layers(run, task)}"
                         f"{run['seconds']:.0f} s{cpu})")
        rows.append(f"| `{task}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


WASSERSTEIN_SEEDS = (  # the cells measured at three seeds: task, activation, and the folders of results/wasserstein/
    # holding seed 0 and seeds 1 and 2 ("" for the table's own records), earlier critics first
    ("circles", "fullsort", "six_layers", "six_layers"), ("circles", "fullsort", "bjorck10", "bjorck10"),
    ("circles", "fullsort", "", "seeds"), ("sphere", "maxmin", "six_layers", "six_layers"),
    ("sphere", "maxmin", "", "seeds"),
)


def wasserstein_seeds_table(results: Path) -> str:
    """The two cells measured at seeds 0, 1 and 2, with the critics tried before (results/wasserstein/six_layers/,
    bjorck10/) and now (results/wasserstein/ and its seeds/): each seed's certified lower bound and CPU seconds,
    their mean and sample deviation, and how many reach 0.98."""
    rows = ["| task, critic | layers | seed 0 | seed 1 | seed 2 | mean ± std | seeds ≥ 0.98 |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    names = dict(ACTIVATIONS)
    for task, activation, first, seeds in WASSERSTEIN_SEEDS:
        folder = results / "wasserstein"
        runs = [json.loads((folder / first / f"{task}_{activation}.json").read_text())]
        runs += [json.loads((folder / seeds / f"{task}_{activation}_seed{k}.json").read_text()) for k in (1, 2)]
        critic = runs[0]["critic"]
        layers = (f"{layers_text(critic['hidden'])}, {critic['bjorck']['iterations']} Björck steps, "
                  f"{critic.get('start', 'orthogonal')} start")
        bounds = [run["certified_lower_bound"] for run in runs]
        cells = [f"{rounded_down(run['certified_lower_bound'])} ({run['cpu_seconds']:.0f} s CPU)" for run in runs]
        rows.append(f"| `{task}`, {names[activation]} | {layers} | " + " | ".join(cells) +
                    f" | {mean_std(bounds, 4)} | {sum(bound >= 0.98 for bound in bounds)} of 3 |")
    return "\n".join(rows) + "\n"


def wasserstein_probes_table(folder: str) -> Callable[[Path], str]:
    """`scripts/measure_wasserstein_probes.sh`'s probes (results/FOLDER/*.json): per task and critic, its layers,
    steps, batch, learning rate and Björck steps as recorded, the certified lower bound of W1 and the CPU seconds."""
    def table(results: Path) -> str:
        rows = ["| task | critic | layers | steps | batch | learning rate | Björck steps | certified lower bound "
                "| CPU (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        runs = [json.loads(path.read_text()) for path in (results / folder).glob("*.json")]
        names = dict(ACTIVATIONS)
        order = [activation for activation, _ in ACTIVATIONS]
        for run in sorted(runs, key=lambda run: (run["source"], order.index(run["critic"]["activation"]),
                                                 run["critic"]["hidden"], run["critic"]["steps"],
                                                 -run["critic"]["bjorck"]["iterations"], run["critic"]["lr"])):
            critic = run["critic"]
            name = (f"GroupSort (groups of {critic['group_size']})" if critic["activation"] == "groupsort"
                    else names[critic["activation"]])
            rows.append(f"| `{run['source']}` | {name} | {layers_text(critic['hidden'])} | "
                        f"{critic['steps']:,} | {critic['batch_size']:,} | {critic['lr']:g} | "
                        f"{critic['bjorck']['iterations']} | {rounded_down(run['certified_lower_bound'])} | "
                        f"{run['cpu_seconds']:.0f} |")
        return "\n".join(rows) + "\n"

    return table


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


NETS = {"relu": "ReLU", "groupsort": "GroupSort"}
NET_NAMES = {"demo": "the demo's GroupSort", "ibp-wide": "`ibp-wide` (AMD EPYC)"}  # scripts/probe_lp_solvers.py's
NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1"}
ATTACK_NAMES = {"AutoAttack (standard)": "AutoAttack (standard)", "apgd (APGD_DEFAULT)": "`apgd`",
                "apgd, use_ibp=False": "`apgd` without the IBP skip",
                "pgd (50 steps, 5 restarts)": "`pgd` (50 steps, 5 restarts)",
                **{f"AutoAttack's {part} alone": f"AutoAttack's {title} alone"
                   for part, title in (("apgd-ce", "APGD-CE"), ("apgd-t", "APGD-T"), ("fab-t", "FAB-T"), ("square", "Square"))}}


def attack_table(norm: str, folder: str = "attacks") -> Callable[[Path], str]:
    """`scripts/compare_autoattack.py`'s table in `norm` (results/FOLDER/NORM.json): per net and attack, the
    robust accuracy, the digits AutoAttack breaks that it misses and the other way round, and the seconds."""
    def table(results: Path) -> str:
        run = json.loads((results / folder / f"{norm}.json").read_text())
        rows = ["| net | attack | robust (%) | digits AutoAttack breaks that it misses | digits it breaks that "
                "AutoAttack misses | seconds |", "| --- | --- | --- | --- | --- | --- |"]
        for row in run["rows"]:
            missed, extra = ("–", "–") if row["missed"] is None else (row["missed"], row["extra"])
            rows.append(f"| {NETS[row['net']]} | {ATTACK_NAMES[row['attack']]} | {row['robust']:.2f} | {missed} | "
                        f"{extra} | {row['seconds']:.1f} |")
        return "\n".join(rows) + "\n"
    return table


def attack_seeds_table(norm: str, seeds: tuple[int, ...], folder: str) -> Callable[[Path], str]:
    """The comparison in `norm` at other seeds (results/FOLDER/NORM.json for seed 0, NORM_seedK.json for seed K):
    per seed and net, AutoAttack's and `apgd`'s robust accuracy and the digits each breaks that the other misses,
    both at that seed."""
    def table(results: Path) -> str:
        rows = ["| seed | net | AutoAttack robust (%) | `apgd` robust (%) | digits AutoAttack breaks that `apgd` misses "
                "| digits `apgd` breaks that AutoAttack misses |", "| --- | --- | --- | --- | --- | --- |"]
        for seed in seeds:
            run = json.loads((results / folder / (f"{norm}.json" if seed == 0 else f"{norm}_seed{seed}.json"))
                             .read_text())
            if run["seed"] != seed:
                raise ValueError(f"the {norm} record of seed {seed} holds seed {run['seed']}")
            for net in NETS:
                (reference,) = [row for row in run["rows"] if row["net"] == net and row["missed"] is None]
                (ours,) = [row for row in run["rows"] if row["net"] == net and row["attack"] == "apgd (APGD_DEFAULT)"]
                rows.append(f"| {seed} | {NETS[net]} | {reference['robust']:.2f} | {ours['robust']:.2f} | "
                            f"{ours['missed']} | {ours['extra']} |")
        return "\n".join(rows) + "\n"
    return table


def apgd_seeds_table(name: str, folder: str) -> Callable[[Path], str]:
    """`compare_autoattack.py --apgd-seeds` (results/FOLDER/NAME.json): per net, AutoAttack at the record's seed, then
    `apgd` at that seed and at each other seed, with the digits AutoAttack breaks that it misses and the other way
    round."""
    def table(results: Path) -> str:
        run = json.loads((results / folder / f"{name}.json").read_text())
        rows = [f"| net | attack | robust (%) | digits AutoAttack (seed {run['seed']}) breaks that it misses | "
                "digits it breaks that AutoAttack misses |", "| --- | --- | --- | --- | --- |"]
        titles = {"AutoAttack (standard)": f"AutoAttack (standard), seed {run['seed']}",
                  "apgd (APGD_DEFAULT)": f"`apgd`, seed {run['seed']}"}
        for row in run["rows"]:
            title = titles.get(row["attack"], row["attack"].replace("apgd,", "`apgd`,")
                               if row["attack"].startswith("apgd, seed ") else None)
            if title is not None:
                missed, extra = ("–", "–") if row["missed"] is None else (row["missed"], row["extra"])
                rows.append(f"| {NETS[row['net']]} | {title} | {row['robust']:.2f} | {missed} | {extra} |")
        return "\n".join(rows) + "\n"
    return table


def needles_table(name: str, seeds: tuple[int, ...], folder: str) -> Callable[[Path], str]:
    """`compare_autoattack.py --digits` at several seeds (results/FOLDER/NAME_seedK.json): per attack on the
    GroupSort net, at which seeds it broke each digit named."""
    def table(results: Path) -> str:
        runs = [json.loads((results / folder / f"{name}_seed{seed}.json").read_text()) for seed in seeds]
        if [run["seed"] for run in runs] != list(seeds) or len({tuple(run["digits"]) for run in runs}) != 1:
            raise ValueError(f"the {name} records are not one set of digits at seeds {seeds}")
        digits = runs[0]["digits"]
        rows = ["| attack | " + " | ".join(f"digit {digit}: broken at seeds" for digit in digits) + " |",
                "| --- |" + " --- |" * len(digits)]
        attacks = [row["attack"] for row in runs[0]["rows"] if row["net"] == "groupsort"]
        for attack in attacks:
            robust = [{row["attack"]: row for row in run["rows"] if row["net"] == "groupsort"}[attack]["robust_digits"]
                      for run in runs]
            cells = []
            for digit in digits:
                broken = [str(seed) for seed, left in zip(seeds, robust) if digit not in left]
                cells.append(f"{', '.join(broken) or 'none'} ({len(broken)} of {len(seeds)})")
            rows.append(f"| {ATTACK_NAMES[attack]} | " + " | ".join(cells) + " |")
        return "\n".join(rows) + "\n"
    return table


def attack_all_digits_table(results: Path) -> str:
    """The L-inf comparison's runs on all 10,000 test digits: apgd against pgd."""
    run = json.loads((results / "attacks" / "linf.json").read_text())
    rows = ["| net | attack | robust (%) | digits the other breaks that it misses | seconds |",
            "| --- | --- | --- | --- | --- |"]
    for row in run["all_digits"]:
        rows.append(f"| {NETS[row['net']]} | {ATTACK_NAMES[row['attack']]} | {row['robust']:.2f} | "
                    f"{row['other_breaks_missed']} | {row['seconds']:.1f} |")
    return "\n".join(rows) + "\n"


def scaling_table(results: Path) -> str:
    """`scripts/measure_scaling.sh`: wall seconds of GroupSort `best` with one and two workers and as four
    shards, and of ReLU `exact` with one and two workers, and whether each gives the one-worker verdicts."""
    run = json.loads((results / "verification" / "scaling.json").read_text())
    seconds, relu = run["seconds"], run["relu_exact"]
    shards = sum(seconds[f"shard{k}"] for k in range(4))

    def same(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = ["| net, method | run | wall seconds | verdicts identical to one worker |", "| --- | --- | --- | --- |",
            f"| GroupSort, `best` | `--workers 1` | {seconds['workers1']:.1f} | – |",
            f"| GroupSort, `best` | `--workers 2` | {seconds['workers2']:.1f} ({run['speedup']:.2f}× faster) | "
            f"{same(run['workers2_identical'])} |",
            f"| GroupSort, `best` | `--shard K/4`, K = 0 to 3, one after another, then `--merge` | {shards:.1f} in all "
            f"| {same(run['merged_identical'])} |",
            f"| ReLU, `exact` | `--workers 1` | {seconds['relu_workers1']:.1f} | – |",
            f"| ReLU, `exact` | `--workers 2` | {seconds['relu_workers2']:.1f} ({relu['speedup']:.2f}× faster) | "
            f"{same(relu['workers2_identical'])} |"]
    return "\n".join(rows) + "\n"


def pool_table(results: Path) -> str:
    """`scripts/measure_pool.sh` (results/epyc/pool.json): the pool of an earlier commit and the current one, in
    alternating rounds on one machine: per net, the median wall seconds with one and two workers, the speed-up
    of the medians, and every round's seconds with two workers."""
    run = json.loads((results / "epyc" / "pool.json").read_text())
    seconds, median = run["seconds"], run["median_seconds"]
    rows = [f"| code | net, method | 1 worker: median of {len(seconds['head_relu_w1'])} rounds, s | 2 workers: median, "
            "s (each round) | speed-up of the medians |", "| --- | --- | --- | --- | --- |"]
    for code, words in (("base", f"{run['base_commit']}: two spawned processes; the main one works only while "
                                 "they start"), ("head", "now: the main process and one spawned, from the two ends")):
        for net, method in run["nets"].items():
            key = f"{code}_{net}"
            rounds = ", ".join(f"{value:.1f}" for value in seconds[f"{key}_w2"])
            rows.append(f"| {words} | {NETS[net]}, `{method}` | {median[key + '_w1']:.1f} "
                        f"| {median[key + '_w2']:.1f} ({rounds}) | {run['speedup'][key]:.2f}× |")
    return "\n".join(rows) + "\n"


def program_seconds(path: Path) -> float:
    """The seconds that the digits decided by a program took, summed over a per-example CSV of `certify.py`."""
    with open(path) as handle:
        return sum(float(row["seconds"]) for row in csv.DictReader(handle) if row["decided_by"] == "milp")


def presolve_table(results: Path) -> str:
    """`scripts/measure_scaling.sh` with one worker before HiGHS's presolve lost its Sparsify rule
    (scaling_before_sparsify.json, its CSVs in before_sparsify/) and now (scaling.json): the wall seconds and
    the part of them spent on the digits that a program decided."""
    folder = results / "verification"
    before, after = (json.loads((folder / name).read_text())["seconds"]
                     for name in ("scaling_before_sparsify.json", "scaling.json"))
    rows = ["| net, method, one worker | every presolve rule: wall seconds | of them, digits decided by a program "
            "| now: wall seconds | of them, digits decided by a program |", "| --- | --- | --- | --- | --- |"]
    for net, run, csv_name in (("GroupSort, `best`", "workers1", "best_workers1.csv"),
                               ("ReLU, `exact`", "relu_workers1", "relu_exact_workers1.csv")):
        rows.append(f"| {net} | {before[run]:.1f} | {program_seconds(folder / 'before_sparsify' / csv_name):.1f} | "
                    f"{after[run]:.1f} | {program_seconds(folder / csv_name):.1f} |")
    return "\n".join(rows) + "\n"


def verification_all_table(results: Path) -> str:
    """`scripts/measure_verification_all.sh`: `best` on the whole test set of the GroupSort net, its verdicts,
    wall time and whether the goal (at most 10 timeouts, within 30 minutes) is met; above the current run, the
    earlier code's: presolve with every rule (`groupsort_best_all_before_sparsify.json`, the code of 06048a3), and
    without Sparsify but before the rounding rule of e68e716 (`groupsort_best_all_before_sum_rule.json`, 893dafc),
    all three on the Intel Xeon; below it, the code and machine that results/epyc/groupsort_best_all.json names,
    the relaxation's bound from its duals on IPX (`groupsort_best_all_dual_bound.json` there), and the same
    machine a day later: the code of the search's record (`groupsort_best_all_head.json`), then the pool's code
    again (`groupsort_best_all_pool_again.json`)."""
    rows = ["| net, method, code | digits | robust | counterexample | timeout | undecided | decided by | wall time "
            "| goal: ≤ 10 timeouts in ≤ 30 min |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, code in (("verification/groupsort_best_all_before_sparsify", "presolve with every rule (06048a3)"),
                           ("verification/groupsort_best_all_before_sum_rule", "presolve without Sparsify (893dafc)"),
                           ("verification/groupsort_best_all", "without Sparsify, rounding's sum rule (e68e716)"),
                           ("epyc/groupsort_best_all", "the pool, code of {code}, {machine}, {date}"),
                           ("epyc/groupsort_best_all_dual_bound",
                            "the relaxation on IPX, its bound from the duals, code of {code}, {machine}, {date}"),
                           ("epyc/groupsort_best_all_head",
                            "the relaxation on IPX again, code of {code}, {machine}, {date}"),
                           ("epyc/groupsort_best_all_pool_again", "the pool again, code of {code}, {machine}, {date}")):
        path = results / f"{name}.json"
        if not path.exists():
            continue
        run = json.loads(path.read_text())
        if "{code}" in code:
            code = code.format(code=run["code"], machine=run["machine"].split(", ")[1], date=run["date"])
        verdicts, minutes = run["verdicts"], run["seconds"] / 60
        stages = ", ".join(f"{stage} {count}" for stage, count in run["decided_by"].items())
        met = verdicts["timeout"] <= 10 and minutes <= 30
        goal = 'yes' if met else '**no**' + (' (the time is met)' if minutes <= 30 else '')
        rows.append(f"| GroupSort, `best`, {run['workers']} workers, {run['time_limit']} s a digit, {code} | "
                    f"{run['digits']:,} | {verdicts['robust']:,} | {verdicts['counterexample']:,} | {verdicts['timeout']} "
                    f"| {verdicts['undecided']} | {stages} | {minutes:.1f} min | {goal} |")
    return "\n".join(rows) + "\n"


def highs_cell(run: dict) -> str:
    """One of `scripts/probe_hard_digits.py`'s HiGHS runs: its verdict and seconds, and for a timeout the lower
    bound of the gap it reached ("no bound" before its first node)."""
    if run["verdict"] != "timeout":
        return f"{run['verdict']}, {run['seconds']:.1f} s"
    bound = "no bound" if run.get("dual_bound") is None else f"{run['dual_bound']:+.4f}"
    return f"timeout, {bound}"


def hard_digits_table(results: Path) -> str:
    """`scripts/probe_hard_digits.py` (results/verification/hard_digits.json): per timeout of the whole-test-set
    run, the compare-exchanges left open by each bound, the program's size, per open rival the relaxation's
    minimum of the gap and the threshold it must pass, and HiGHS with and without its primal heuristics."""
    run = json.loads((results / "verification" / "hard_digits.json").read_text())
    rows = ["| digit (label) | compare-exchanges open of 1,600: intervals / carried from intervals / carried from "
            "the first layer | columns, nonzeros | relaxation's minimum of the gap (threshold), per open rival | "
            f"HiGHS, {run['seconds_a_digit']:.0f} s | without primal heuristics |",
            "| --- | --- | --- | --- | --- | --- |"]
    for digit in run["digits"]:
        opened = digit["open"]
        rivals = "; ".join(f"{r['rival']}: {r['relaxation']:+.4f} ({r['threshold']:.4f})" for r in digit["rivals"])
        counts = " / ".join(f"{opened[bound]:,}" for bound in ("intervals", "carried_from_intervals",
                                                                 "carried_from_first_layer"))
        rows.append(f"| {digit['index']} ({digit['label']}) | {counts} | {digit['columns']:,}, {digit['nonzeros']:,} | "
                    f"{rivals} | "
                    f"{highs_cell(digit['highs'])} | {highs_cell(digit['highs_no_heuristics'])} |")
    return "\n".join(rows) + "\n"


def relaxation_rows_table(results: Path) -> str:
    """`scripts/probe_relaxation.py` (results/epyc/probes/relaxation_rows.json): per timeout, on its weakest
    open rival, the relaxation's minimum of the gap against its threshold, the top-k rows it violates, the ordering
    rows it violates and the minimum once they are added, and the ideal cuts and the minimum after them."""
    run = json.loads((results / "epyc" / "probes" / "relaxation_rows.json").read_text())
    rows = ["| digit (label) | rival | relaxation's minimum of the gap (threshold) | top-k rows violated | ordering "
            "rows violated; added (rounds), minimum then | ideal cuts: compare-exchanges, cuts (rounds), minimum then "
            "|", "| --- | --- | --- | --- | --- | --- |"]
    for digit in run["digits"]:
        top_k, ordering, cuts = (digit[key] for key in ("top_k_rows", "ordering_rows", "ideal_cuts"))
        rows.append(f"| {digit['index']} ({digit['label']}) | {digit['rival']} | {digit['relaxation']:+.4f} "
                    f"({digit['threshold']:.4f}) | {top_k['violated']} of {top_k['checked']:,} | {ordering['violated']}; "
                    f"{ordering['added']} ({ordering['rounds']}), {ordering['relaxation']:+.4f} | "
                    f"{cuts['compare_exchanges']}, {cuts['cuts']} ({cuts['rounds']}), {cuts['relaxation']:+.4f} |")
    return "\n".join(rows) + "\n"


def group_hulls_table(results: Path) -> str:
    """`scripts/probe_group_hulls.py` (results/epyc/probes/group_hulls.json): per timeout, on the rival searched
    first, the relaxation's minimum of the gap and the minimum with each group convexified exactly (the lower bound
    proved and the master's minimum, marked where artificial columns are left in the master's solution and it bounds
    nothing), against the threshold, with the rounds, columns and seconds it took."""
    run = json.loads((results / "epyc" / "probes" / "group_hulls.json").read_text())
    rows = ["| digit (label) | rival (threshold) | binaries | relaxation's minimum of the gap | each group's convex "
            "hull: lower bound proved, master's minimum | rounds, columns, seconds |",
            "| --- | --- | --- | --- | --- | --- |"]
    for digit in run["digits"]:
        hull = digit["hull"]
        left = f" (artificial columns left: {hull['artificial']:.2g})" if hull["artificial"] > 0 else ""
        rows.append(f"| {digit['index']} ({digit['label']}) | {digit['rival']} ({digit['threshold']:.4f}) | "
                    f"{digit['binaries']:,} | {digit['relaxation']:+.4f} | "
                    f"{hull['lower']:+.4f}, {hull['master']:+.4f}{left} | "
                    f"{hull['rounds']}, {hull['columns']:,}, {hull['seconds']:.0f} |")
    return "\n".join(rows) + "\n"


def probing_table(results: Path) -> str:
    """`scripts/probe_relaxation.py`'s probing (results/epyc/probes/relaxation_rows.json): per timeout, the binaries
    probed, those fixed in the first round and in all (rounds, LPs, seconds), and HiGHS's status and proved lower
    bound of the gap without and with those fixings, against the threshold."""
    run = json.loads((results / "epyc" / "probes" / "relaxation_rows.json").read_text())

    def highs(search: dict) -> str:
        bound = "none" if search["dual_bound"] is None else f"{search['dual_bound']:+.4f}"
        return f"{search['status'].removeprefix('k')}, {bound}"

    rows = ["| digit | threshold | binaries probed | fixed: first round, in all (rounds, LPs, seconds) | "
            f"HiGHS, {run['mip_seconds']:.0f} s: status, lower bound of the gap | the same with the fixings |",
            "| --- | --- | --- | --- | --- | --- |"]
    for digit in run["digits"]:
        probing = digit["probing"]
        settled = ", settled" if probing["settled"] else ""
        rows.append(f"| {digit['index']} | {digit['threshold']:.4f} | {probing['drawn']:,} | {probing['first_round']}, "
                    f"{probing['fixed']} ({probing['rounds']}, {probing['lps']:,}, {probing['seconds']:.0f}{settled}) | "
                    f"{highs(digit['highs']['plain'])} | {highs(digit['highs']['probed'])} |")
    return "\n".join(rows) + "\n"


def scip_table(results: Path) -> str:
    """`scripts/probe_scip.py` (results/epyc/probes/scip.json): per timeout, on its weakest open rival, SCIP's
    status, nodes and seconds, and the lower bound of the gap it proved against the threshold."""
    run = json.loads((results / "epyc" / "probes" / "scip.json").read_text())
    rows = [f"| digit (label) | rival | SCIP {run['scip']} (`pyscipopt` {run['pyscipopt']}), {run['seconds_a_digit']:.0f} s: "
            "status, nodes, seconds | "
            "lower bound of the gap proved (threshold) |", "| --- | --- | --- | --- |"]
    for digit in run["digits"]:
        bound = "none" if digit["gap_bound"] is None else f"{digit['gap_bound']:+.4f}"
        rows.append(f"| {digit['index']} ({digit['label']}) | {digit['rival']} | {digit['status']}, {digit['nodes']:,}, "
                    f"{digit['seconds']:.0f} | {bound} ({digit['threshold']:.4f}) |")
    return "\n".join(rows) + "\n"


def lp_solvers_table(results: Path) -> str:
    """`scripts/probe_lp_solvers.py` on the demo's GroupSort net and on `ibp-wide`
    (results/epyc/probes/lp_solvers_{demo,ibp-wide}.json): per digit and open rival, the relaxation on the dual
    simplex and on IPX without crossover, each with its status, seconds, and the bound of the gap proved from its
    duals, against the threshold."""
    rows = ["| net | digit (label) | columns, rows, binaries | rival (threshold) | dual simplex: status, seconds, bound "
            "proved | IPX, no crossover: status, seconds, bound proved |", "| --- | --- | --- | --- | --- | --- |"]
    for net in ("demo", "ibp-wide"):
        run = json.loads((results / "epyc" / "probes" / f"lp_solvers_{net}.json").read_text())
        for digit in run["digits"]:
            for rival in digit["rivals"]:
                cells = [f"{one['status']}, {one['seconds']:.1f}, "
                         + ("none" if one["proved"] is None else f"{one['proved']:+.4f}")
                         for one in (rival["dual simplex"], rival["IPX, no crossover"])]
                rows.append(f"| {NET_NAMES[net]} | {digit['index']} ({digit['label']}) | {digit['columns']:,}, "
                            f"{digit['rows']:,}, {digit['binaries']:,} | {rival['rival']} ({rival['threshold']:.4f}) | "
                            f"{cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


def search_nodes_table(results: Path) -> str:
    """`scripts/probe_hard_digits.py --default-only` on every timeout of the whole-test-set run
    (results/epyc/probes/hard_digits_nodes.json): how far HiGHS's search got within the run's limit, the digits
    that it settled, that it left still at the root node (no node finished) and that it left branching, each with
    the simplex iterations and, for a timeout, the lower bound of the gap proved."""
    run = json.loads((results / "epyc" / "probes" / "hard_digits_nodes.json").read_text())
    searches = [digit["highs"] for digit in run["digits"]]

    def spread(values: list[float], form: str) -> str:
        if not values:
            return "–"
        return f"{statistics.median(values):{form}} ({min(values):{form}} to {max(values):{form}})"

    rows = [f"| HiGHS with `milp`'s settings, {run['seconds_a_digit']:.0f} s a digit | digits | nodes finished: median "
            "(range) | simplex iterations: median (range) | lower bound of the gap proved: median (range) |",
            "| --- | --- | --- | --- | --- |"]
    for state, chosen in (("settled", lambda one: one["verdict"] != "timeout"),
                          ("timeout, still at the root node",
                           lambda one: one["verdict"] == "timeout" and not one["nodes"]),
                          ("timeout, branching", lambda one: one["verdict"] == "timeout" and one["nodes"])):
        group = [one for one in searches if chosen(one)]
        bounds = [one["dual_bound"] for one in group
                  if one["verdict"] == "timeout" and one.get("dual_bound") is not None]
        rows.append(f"| {state} | {len(group)} of {len(searches)} | {spread([one['nodes'] for one in group], '.0f')} | "
                    f"{spread([one['iterations'] for one in group], ',.0f')} | {spread(bounds, '+.4f')} |")
    return "\n".join(rows) + "\n"


def longer_table(results: Path) -> str:
    """`scripts/probe_hard_digits.py --default-only` with a longer time limit
    (results/verification/hard_digits_300s.json) beside the same digits' runs at the whole-test-set run's limit
    (results/verification/hard_digits.json): per digit, HiGHS with `milp`'s settings at each limit."""
    first = json.loads((results / "verification" / "hard_digits.json").read_text())
    longer = json.loads((results / "verification" / "hard_digits_300s.json").read_text())
    short = {digit["index"]: digit for digit in first["digits"]}
    rows = [f"| digit (label) | HiGHS, {first['seconds_a_digit']:.0f} s (the table above) | "
            f"HiGHS, {longer['seconds_a_digit']:.0f} s ({longer['machine'].split(', ')[1]}) |", "| --- | --- | --- |"]
    for digit in longer["digits"]:
        rows.append(f"| {digit['index']} ({digit['label']}) | {highs_cell(short[digit['index']]['highs'])} | "
                    f"{highs_cell(digit['highs'])} |")
    return "\n".join(rows) + "\n"


def group_bounds_table(results: Path) -> str:
    """`scripts/probe_group_bounds.py` (results/verification/group_bounds.json): per digit, the compare-exchanges
    open and the relaxation's minimum of each open rival's gap with the carried bounds, with each group's outputs
    ordered, and with every open difference tightened by its cone's root node; HiGHS on the carried and the
    tightened programs, and what the tightened build took."""
    run = json.loads((results / "verification" / "group_bounds.json").read_text())
    rows = ["| digit | compare-exchanges open: carried / tightened | relaxation's minimum of the gap (threshold), "
            "per open rival: carried / outputs ordered / tightened | HiGHS, "
            f"{run['search_seconds']:.0f} s: carried / tightened | tightened build: seconds, bounds proved / asked |",
            "| --- | --- | --- | --- | --- |"]
    for digit in run["digits"]:
        carried, ordered, tightened = (digit[variant] for variant in ("carried", "ordered", "tightened"))
        rivals = "; ".join(f"{a['rival']}: {a['relaxation']:+.4f} / {b['relaxation']:+.4f} / "
                           f"{c['relaxation']:+.4f} ({a['threshold']:.4f})"
                           for a, b, c in zip(carried["rivals"], ordered["rivals"], tightened["rivals"], strict=True))
        rows.append(f"| {digit['index']} | {carried['open']:,} / {tightened['open']:,} | {rivals} | "
                    f"{highs_cell(carried['highs'])} / {highs_cell(tightened['highs'])} | {tightened['seconds']:.1f}, "
                    f"{tightened['bounds_proved']:,} / {tightened['bounds_asked']:,} |")
    return "\n".join(rows) + "\n"


METHODS = ("global", "pairwise", "margin", "ibp")  # the sound certificates every record holds


def method_cells(certified: dict[str, float], methods: tuple[str, ...] = METHODS) -> str:
    """A record's certified accuracy under each of `methods`, as table cells."""
    return " | ".join(f"{certified[method]:.2f}" for method in methods)


CERTIFIED_NETS = (("demo", "GroupSort"), ("relu", "ReLU"))  # the reproduction's nets, as the suite names them


def certification_table(results: Path) -> str:
    """Every sound method on the reproduction's two nets at L-inf 0.1 (results/reproduction/): clean, certified,
    APGD's robust accuracy and the certified digits it broke; and IBP and APGD in the whole ball
    (`scripts/measure_certification.sh`, results/certification/NET_ball.json)."""
    rows = ["| model | method | clean (%) | certified (%) | APGD robust (%) | certified broken by APGD |",
            "| --- | --- | --- | --- | --- | --- |"]
    for recipe, name in CERTIFIED_NETS:
        run = json.loads((results / "reproduction" / f"{recipe}.json").read_text())
        for method in METHODS:
            rows.append(f"| {name} | {method} | {run['clean']:.2f} | {run['certified'][method]:.2f} | "
                        f"{run['attack_robust']:.2f} | {run['broken_certified'][method]} |")
        ball = json.loads((results / "certification" / f"{recipe}_ball.json").read_text())
        rows.append(f"| {name} | ibp, whole ball | {ball['clean']:.2f} | {ball['certified']['ibp']:.2f} | "
                    f"{ball['attack_robust']:.2f} (whole ball) | {ball['broken_certified']['ibp']} |")
    return "\n".join(rows) + "\n"


CURVE_RADII = (0.02, 0.06, 0.1, 0.14, 0.2, 0.3)  # the radius curve's rows shown as a table


def radius_curve_table(results: Path) -> str:
    """The GroupSort net's radius curve (results/certification/curves_demo.csv, `certify.py --eps`): certified
    accuracy per method and APGD's robust accuracy at some of its radii."""
    with (results / "certification" / "curves_demo.csv").open(newline="") as stream:
        curve = {float(row["eps"]): row for row in csv.DictReader(stream)}
    rows = ["| ε | global | pairwise | margin | ibp | APGD robust |", "| --- | --- | --- | --- | --- | --- |"]
    for eps in CURVE_RADII:
        row = curve[eps]
        rows.append(f"| {eps:g} | " + " | ".join(f"{float(row[column]):.2f}" for column in
                                               ("global", "pairwise", "margin", "ibp", "apgd")) + " |")
    return "\n".join(rows) + "\n"


VERIFICATION_HEADER = ("| net, radius, digits, method | clean | global | pairwise | margin | ibp | verified: robust / "
                       "counterexample / timeout / undecided | decided by | APGD robust | verification's wall time |",
                       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def verification_here_table(folder: str) -> Callable[[Path], str]:
    """`scripts/measure_verification.sh`'s table of results/FOLDER/ (the Intel Xeon's results/verification/xeon/,
    the AMD EPYC's results/epyc/verification/)."""
    return lambda results: verification_rows([json.loads(path.read_text())
                                              for path in (results / folder).glob("*.json")])


def verification_rows(runs: list[dict]) -> str:
    """`scripts/measure_recipe.py --verify` on the seed-0 checkpoints of the reproduction trained on one machine:
    every sound certificate, the verdicts of the verification method (`best`, `exact` or `lp`), what decided
    them, APGD's robust accuracy and the verification's wall time; percentages of the digits used. ReLU first,
    by radius, then by method."""
    rows = list(VERIFICATION_HEADER)
    methods = ("best", "exact", "lp")

    def order(run: dict) -> tuple:
        return (run["training"]["activation"] != "relu", run["radius"], -run["digits"],
                methods.index(run["verification"]["method"]))

    rows += [verification_row(run, NETS[run["training"]["activation"]]) for run in sorted(runs, key=order)]
    return "\n".join(rows) + "\n"


def verification_row(run: dict, net: str) -> str:
    """One `measure_recipe.py --verify` record as a row of `verification_here_table`, its net called `net`."""
    certified, verification = run["certified"], run["verification"]
    verdicts = verification["verdicts"]
    stages = ", ".join(f"{stage} {count:,}" for stage, count in verification["decided_by"].items())
    if verification.get("timed_out_in"):  # recorded since 9af88f6
        stages += "; timeouts: " + ", ".join(f"{stage} {count:,}" for stage, count in verification["timed_out_in"].items())
    counts = " / ".join(f"{verdicts[status]:,}" for status in ("robust", "counterexample", "timeout", "undecided"))
    return (f"| {net}, {run['radius']:g}, {run['digits']:,}, `{verification['method']}` | {run['clean']:.2f} | "
            f"{method_cells(certified)} | **{counts}** ({verification['robust']:.2f} robust) | {stages} | "
            f"{run['attack_robust']:.2f} | {verification['seconds']:.1f} s, {verification['workers']} workers, "
            f"{verification['time_limit']:g} s a digit |")


def epyc_recipe_table(results: Path) -> str:
    """`ibp-wide` trained and verified again on the AMD EPYC VM (results/epyc/ibp-wide.json), and the same
    checkpoint verified with the relaxation on IPX and its bound from the duals (ibp-wide_dual_bound.json there),
    as rows of `verification_here_table`."""
    rows = [*VERIFICATION_HEADER]
    for name, label in (("ibp-wide", "(AMD EPYC)"),
                        ("ibp-wide_dual_bound", "(AMD EPYC), the relaxation on IPX, its bound from the duals")):
        run = json.loads((results / "epyc" / f"{name}.json").read_text())
        rows.append(verification_row(run, f"`{run['recipe']}` {label}"))
    return "\n".join(rows) + "\n"


def float32_record(results: Path, net: str) -> dict:
    """`net` certified as run in float32: results/allowance/NET_float32.json, or else the recipe's own record of
    seed 0."""
    path = results / "allowance" / f"{net}_float32.json"
    return json.loads(path.read_text()) if path.exists() else seeds_of(results, net)[0]


def allowance_table(net: str) -> Callable[[Path], str]:
    """`scripts/measure_recipe.py` on `net` as run in float32 and in float64 (results/allowance/NET_float64.json,
    and NET_float32.json there or else the recipe's record in results/recipes/): every sound method's certified
    accuracy, APGD's, and what soundness in float32 costs against float64 under the tightest method (the goal:
    at most 1 point)."""

    def table(results: Path) -> str:
        runs = {"float32": float32_record(results, net),
                "float64": json.loads((results / "allowance" / f"{net}_float64.json").read_text())}
        rows = ["| certified network | clean (%) | global | pairwise | margin | ibp | APGD robust (%) | "
                "certified broken |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arithmetic, run in runs.items():
            rows.append(f"| {arithmetic} | {run['clean']:.2f} | {method_cells(run['certified'])} | "
                        f"{attacked(run)} | {max(run['broken_certified'].values())} |")
        best = runs["float64"]["best_method"]
        run32, run64 = runs["float32"]["certified"][best], runs["float64"]["certified"][best]
        cost = run64 - run32
        rows += ["", "| tightest method | certified, float32 (%) | certified, float64 (%) | soundness in float32 "
                 "costs (points) | goal: ≤ 1 |", "| --- | --- | --- | --- | --- |",
                 f"| `{best}` | {run32:.2f} | {run64:.2f} | **{cost:.2f}** | {'yes' if cost <= 1 else '**no**'} |"]
        return "\n".join(rows) + "\n"

    return table


RULE_STAGES = (("before_gap_rule", "before the rules of 2026-12-04"), ("before_sum_rule", "before the sum rule"))


def allowance_rules_table(results: Path) -> str:
    """What the rounding rules gained on each net measured before them: the 2026-12-04 rules (the value at x
    with its spread, the gap as one dot product; results/allowance/NET_float32_before_gap_rule.json) and the
    2026-12-05 sum rule (NET_float32_before_sum_rule.json), against the same checkpoint now (NET_float32.json,
    or the recipe's record) and in float64 (NET_float64.json): the tightest method's certified accuracy, and
    what soundness in float32 costs at each stage."""
    header = [f"float32 {name} (%)" for _, name in RULE_STAGES] + ["float32 now (%)", "float64 (%)"]
    header += [f"costs {name} (points)" for _, name in RULE_STAGES] + ["costs now (points)"]
    rows = ["| net | " + " | ".join(header) + " |", "|" + " --- |" * (len(header) + 1)]
    for first in sorted((results / "allowance").glob(f"*_float32_{RULE_STAGES[0][0]}.json")):
        net = first.name.removesuffix(f"_float32_{RULE_STAGES[0][0]}.json")
        run64 = json.loads((results / "allowance" / f"{net}_float64.json").read_text())
        best = run64["best_method"]
        stages = [results / "allowance" / f"{net}_float32_{stage}.json" for stage, _ in RULE_STAGES]
        runs = [json.loads(path.read_text()) if path.exists() else None for path in stages]
        runs.append(float32_record(results, net))
        n64 = run64["certified"][best]
        certified = [None if run is None else run["certified"][best] for run in runs]
        cells = [" " if value is None else f"{value:.2f}" for value in certified] + [f"{n64:.2f}"]
        costs = [" " if value is None else f"{n64 - value:.2f}" for value in certified]
        costs[-1] = f"**{costs[-1]}**"
        rows.append(f"| `{net}` | " + " | ".join(cells + costs) + " |")
    return "\n".join(rows) + "\n"


def mean_std(values: list[float] | tuple[float, ...], places: int = 2) -> str:
    """The mean ± the sample standard deviation (n - 1) of several seeds' figures, to `places` decimals."""
    return f"{statistics.mean(values):.{places}f} ± {statistics.stdev(values):.{places}f}"


def seeds_table(recipe: str, methods: tuple[str, ...] = (), folders: tuple[str, ...] = ()) -> Callable[[Path], str]:
    """A recipe's seeds (`scripts/measure_recipe.py`'s records, in `folders` where given): clean, certified by each
    of `methods` and by the tightest sound method, APGD's robust accuracy, the certified digits it broke and the
    training's time; then the seeds' mean and standard deviation (n - 1)."""

    def figures(run: dict) -> list[float]:
        return [run["clean"], *(run["certified"][method] for method in methods), run["best_certified"],
                run["attack_robust"]]

    def table(results: Path) -> str:
        runs = seeds_of(results, recipe, folders)
        rows = ["| seed | clean (%) | " + "".join(f"{method} (%) | " for method in methods) + "certified (%) | "
                "APGD robust (%) | certified broken | training (min) | s / epoch |",
                "| --- " * (7 + len(methods)) + "|"]
        for run in runs:
            training, cells = run["training"], [f"{value:.2f}" for value in figures(run)]
            cells[-2] = f"{cells[-2]} {run['best_method']}"
            cells[-1] = attacked(run)
            rows.append(f"| {training['seed']} | " + " | ".join(cells) + f" | "
                        f"{run['broken_certified'][run['best_method']]} | {training['train_seconds'] / 60:.1f} | "
                        f"{training['seconds_per_epoch_median']:.1f} |")
        if len(runs) > 1:
            cells = [mean_std(column) for column in zip(*(figures(run) for run in runs))]
            cells[-2] = f"**{cells[-2]}**"
            minutes = sum(run["training"]["train_seconds"] for run in runs) / 60
            rows.append(f"| mean ± std of {len(runs)} | " + " | ".join(cells) + " | "
                        f"{sum(run['broken_certified'][run['best_method']] for run in runs)} | {minutes:.1f} in all | |")
        return "\n".join(rows) + "\n"

    return table


L2_RECIPES = ("l2", "l2-lmt", "bjorck-l2", "orthonormal-l2")  # the MLPs certified at L2 1.58


def methods_table(recipes: tuple[str, ...], folder: str | None = None) -> Callable[[Path], str]:
    """Seed 0 of each of `recipes` (`scripts/measure_recipe.py`'s records; those of results/FOLDER/RECIPE.json
    when a `folder` is given, another machine's): every sound method's certified accuracy, APGD's robust
    accuracy, the most certified digits it broke under any method, and the training."""

    def table(results: Path) -> str:
        rows = methods_header("recipe")
        for recipe in recipes:
            run = (seeds_of(results, recipe)[0] if folder is None
                   else json.loads((results / folder / f"{recipe}.json").read_text()))
            rows.append(methods_row(f"`{recipe}`", run))
        return "\n".join(rows) + "\n"

    return table


def methods_header(first: str) -> list[str]:
    """The header of the methods' tables after its first columns `first` ('recipe | threads'), with its rule."""
    columns = [*first.split(" | "), "clean (%)", *METHODS, "APGD robust (%)", "certified broken", "epochs",
               "training (min)"]
    return ["| " + " | ".join(columns) + " |", "| --- " * len(columns) + "|"]


def methods_row(first: str, run: dict) -> str:
    """A row of the methods' tables after its first cells `first`: clean, every sound method's certified
    accuracy, APGD's robust accuracy, the most certified digits it broke under any method, and the training."""
    training = run["training"]
    return (f"| {first} | {run['clean']:.2f} | {method_cells(run['certified'])} | {attacked(run)} | "
            f"{max(run['broken_certified'].values())} | {training['epochs']} | {training['train_seconds'] / 60:.1f} |")


def variants_table(recipe: str, folder: str) -> Callable[[Path], str]:
    """The variants of `recipe` in results/FOLDER/ (`scripts/measure_recipes.sh` with FLAGS): per variant, by
    checkpoint name, the flags added to the recipe and the figures of `methods_row`."""

    def table(results: Path) -> str:
        runs = [json.loads(path.read_text()) for path in sorted((results / folder).glob(f"{recipe}+*.json"))]
        rows = methods_header(f"`{recipe}` with")
        rows += [methods_row(f"`{run['variant']}`", run) for run in runs if run["recipe"] == recipe]
        return "\n".join(rows) + "\n"

    return table


def threads_table(recipe: str, folders: tuple[str, ...]) -> Callable[[Path], str]:
    """Seed 0 of `recipe` trained with different thread counts (results/FOLDER/RECIPE.json, one folder each): what
    the summation order does to a short training's figures."""

    def table(results: Path) -> str:
        rows = methods_header("recipe | threads")
        for folder in folders:
            run = json.loads((results / folder / f"{recipe}.json").read_text())
            rows.append(methods_row(f"`{recipe}` | {run['threads']}", run))
        return "\n".join(rows) + "\n"

    return table


def marabou_table(results: Path) -> str:
    """`scripts/compare_marabou.py`: per verdict of `exact`, how Marabou answered on the same digits, and the
    seconds each spent on them (per digit, summed; without start-up)."""
    run = json.loads((results / "verification" / "marabou.json").read_text())
    rows = ["| `--method exact` | digits | Marabou: the same | Marabou: timeout | Marabou: another verdict | "
            "seconds, `exact` | seconds, Marabou |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for verdict in ("robust", "counterexample", "timeout"):
        mine = [row for row in run["rows"] if row["exact"] == verdict]
        if mine:
            same = sum(row["marabou"] == verdict for row in mine)
            late = sum(row["marabou"] == "timeout" for row in mine)
            rows.append(f"| {verdict} | {len(mine)} | {same} | {late} | {len(mine) - same - late} | "
                        f"{sum(row['exact_seconds'] for row in mine):.1f} | "
                        f"{sum(row['marabou_seconds'] for row in mine):.1f} |")
    return "\n".join(rows) + "\n"


def attacked(run: dict) -> str:
    """APGD's robust accuracy, naming the digits it ran on where they were fewer than the certified ones (then
    beside the certified accuracy on those same digits)."""
    digits = run.get("attacked_digits", run["digits"])
    if digits == run["digits"]:
        return f"{run['attack_robust']:.2f}"
    return f"{run['attack_robust']:.2f} (first {digits} digits, {run['attacked_certified']:.2f} certified there)"


def method_label(run: dict, open_digits: bool = False) -> str:
    """The tightest sound method of a record: a certificate's name, or exact verification (`best`), with
    `open_digits` the digits it left open and what the tightest certificate alone proved."""
    if run["best_method"] != "best":
        return run["best_method"]
    if not open_digits:
        return "exact (`best`)"
    verdicts, certified = run["verification"]["verdicts"], run["certified"]
    certificate = max((method for method in certified if method != "best"), key=certified.get)
    return (f"exact (`best`: {verdicts['timeout']} timeouts, {verdicts['undecided']} undecided; "
            f"{certificate} alone {certified[certificate]:.2f})")


def recipes_table(results: Path) -> str:
    """`scripts/measure_recipe.py`'s records in results/recipes/: per trained recipe, its layers, the certified
    accuracy of the tightest sound method, APGD's robust accuracy on the same net, and the training's time (not the
    variants, which `variants_table` shows)."""
    rows = ["| recipe (seed) | layers | ball | clean (%) | certified (%) | APGD robust (%) | certified broken | "
            "training (min) | s / epoch |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path in sorted((results / "recipes").glob("*.json")):
        run = json.loads(path.read_text())
        if "variant" in run:
            continue
        training = run["training"]
        layers = ", ".join([*training["convs"], *map(str, training["hidden"])])
        norm = NORM_NAMES[run["norm"]]
        rows.append(f"| `{run['recipe']}` ({training['seed']}) | {layers}, {training['activation']} | {norm} "
                    f"{run['radius']:g} | {run['clean']:.2f} | **{run['best_certified']:.2f}** "
                    f"{method_label(run, open_digits=True)} | "
                    f"{attacked(run)} | {run['broken_certified'][run['best_method']]} | "
                    f"{training['train_seconds'] / 60:.1f} | {training['seconds_per_epoch_median']:.1f} |")
    return "\n".join(rows) + "\n"


def reproduction_table(results: Path) -> str:
    """The demo's two runs as `scripts/measure_recipes.sh` recorded them with RESULTS=results/reproduction: the clean
    and certified accuracy that training printed (the demo's `global` rule), every sound method's certified
    accuracy and APGD's robust accuracy on the saved net, and the training's time."""
    return reproduction_rows([seeds_of(results, recipe)[0] for recipe in REPRODUCTION])


def epyc_reproduction_table(results: Path) -> str:
    """The demo's two runs again on the AMD EPYC VM (RESULTS=results/epyc/reproduction), as
    `reproduction_table` shows them."""
    return reproduction_rows([json.loads((results / "epyc" / "reproduction" / f"{recipe}.json").read_text())
                              for recipe in REPRODUCTION])


def reproduction_rows(runs: list[dict]) -> str:
    """`reproduction_table`'s rows, one per `scripts/measure_recipe.py` record of a demo run."""
    rows = ["| run | clean (%) | certified, `global` (%) | `pairwise` | `margin` | `ibp` | APGD robust (%) | "
            "certified broken | training (min) | s / epoch |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        training, certified = run["training"], run["certified"]
        rows.append(f"| `{run['recipe']}` ({NETS[training['activation']]}, seed {training['seed']}, {run['threads']} "
                    f"threads) | {training['clean_accuracy']:.3f} | **{training['certified_accuracy']:.3f}** | "
                    f"{method_cells(certified, ('pairwise', 'margin', 'ibp'))} | "
                    f"{attacked(run)} | {max(run['broken_certified'].values())} | "
                    f"{training['train_seconds'] / 60:.1f} | {training['seconds_per_epoch_median']:.2f} |")
    return "\n".join(rows) + "\n"


ORIGINAL = {  # the original demo's own figures, quoted: its README, and its code's runs that saved the two
    # checkpoints of ../shared/original-demo (that folder's README), by its global rule in exact arithmetic
    "groupsort": {"its README": (97.37, 73.73), "its code, the checkpoint it saved": (97.18, 74.13)},
    "relu": {"its README": (93.01, 10.68), "its code, the checkpoint it saved": (93.13, 9.88)},
}


def original_record(results: Path, activation: str) -> dict:
    """`scripts/measure_recipe.py`'s record of the original demo's checkpoint of `activation`."""
    return json.loads((results / "reproduction" / "original" / f"{activation}.json").read_text())


def original_checkpoints_table(results: Path) -> str:
    """The original demo's two checkpoints (results/reproduction/original/, `scripts/measure_recipe.py`): its own
    clean and certified figures (`ORIGINAL`, quoted: its global rule in exact arithmetic) beside every sound
    method of this project and APGD's robust accuracy on all the test digits."""
    rows = ["| checkpoint | clean (%) | the original's `global`, exact arithmetic (quoted) | global | pairwise | margin "
            "| ibp | APGD robust (%) | certified broken |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for activation in ("groupsort", "relu"):
        run = original_record(results, activation)
        quoted = ORIGINAL[activation]["its code, the checkpoint it saved"][1]
        rows.append(f"| `{activation}.p` ({NETS[activation]}) | {run['clean']:.2f} | {quoted:.2f} | "
                    f"{method_cells(run['certified'])} | {attacked(run)} | {max(run['broken_certified'].values())} |")
    return "\n".join(rows) + "\n"


def readme_reproduction_table(results: Path) -> str:
    """The README's rows: per net, the original demo's own figures (`ORIGINAL`, quoted), its checkpoint certified
    by this project's sound `global` rule (results/reproduction/original/), and the demo's run on this machine
    (results/reproduction/): the clean and certified accuracy that training printed for seed 0, to its three
    decimals, and their mean and standard deviation (n - 1) over the seeds trained."""
    rows = ["| run | command | clean (%) | certified (%) |", "| --- | --- | --- | --- |"]
    for recipe in REPRODUCTION:
        runs = seeds_of(results, recipe)
        training = runs[0]["training"]
        activation = training["activation"]
        name, flags = NETS[activation], "" if recipe == "demo" else f" --recipe {recipe}"
        for source, (clean, certified) in ORIGINAL[activation].items():
            rows.append(f"| {name} | the original demo: {source} | {clean:.2f} | {certified:.2f} |")
        original = original_record(results, activation)
        rows.append(f"| {name} | that checkpoint, `certify.py` (sound in float32) | {original['clean']:.2f} | "
                    f"{original['certified']['global']:.2f} |")
        rows.append(f"| {name} | `python train_mnist.py{flags} --data-dir ../shared/mnist` (seed {training['seed']}) "
                    f"| **{training['clean_accuracy']:.3f}** | **{training['certified_accuracy']:.3f}** |")
        if len(runs) > 1:
            seeds = [run["training"]["seed"] for run in runs]
            cells = [mean_std([run["training"][key] for run in runs]) for key in ("clean_accuracy", "certified_accuracy")]
            rows.append(f"| {name} | the same, {len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± std | "
                        f"{cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


GOALS = (  # recipe, ball, the goal, the field's figure and its source
    ("cnn-ibp", "L∞ 0.1", "≥ 95", "97.08, IBP medium CNN (deepmind/interval-bound-propagation)"),
    ("cnn-ibp-0.3", "L∞ 0.3", "≥ 85", "93–94, IBP and its successors, large CNNs"),
    ("bcop-l2", "L2 1.58", "> 56.66", "56.66, BCOP large conv net (LConvNet, 5 trials); 62.8, GloRo 4C3F"),
    ("orthonormal-l2", "L2 1.58", "> 54.46", "54.46, FC 784-1024-1024-1024-10, GroupSort(2), Björck layers "
     "(LConvNet, 5 trials, 200 epochs); 62.8, GloRo 4C3F"),
)


RECIPE_WORDS = {"demo": "the defaults: the original demo, GroupSort groups of 10, penalty 0.01, 100 epochs",
                "ibp-gs50": "IBP training, GroupSort groups of 50, radius ramped over 20 of 120 epochs",
                "ibp-wide": "IBP training, 1000 units in groups of 50, trained at 0.15, smooth ramp, two learning-rate "
                            "drops",
                "ibp-wide-0.3": "`ibp-wide` for L∞ 0.3, trained at 0.4",
                "l2-lmt": "Lipschitz-margin training on the L2 `margin` thresholds, 1000 units, no penalty, 240 epochs",
                "l2": "L2 penalty (`--norm l2 --lc_penalty 0.5`), certified at L2 radius 1.58 by `margin`",
                "lmt": "Lipschitz-margin training on the `margin` thresholds, 10 epochs",
                "bjorck-l2": "orthonormal weights (`--constraint bjorck`, Anil et al.), 784-1024-10, MaxMin, "
                             "`lmt` loss, 8 epochs",
                "cnn-ibp": "Gowal et al.'s small CNN, ReLU, IBP training at 0.2",
                "cnn-ibp-0.3": "`cnn-ibp` for L∞ 0.3, trained at 0.4",
                "bcop-l2": "BCOP orthogonal convolutions, MaxMin, orthonormal Linear layers, `lmt` loss",
                "orthonormal-l2": "Björck's iteration in the forward pass (Anil et al.), 784-1024-10, MaxMin, "
                                  "`lmt` loss, batches of 1,024"}


RECORDS = ("reproduction", "recipes")  # the folders of results/ that hold `scripts/measure_recipe.py`'s records
REPRODUCTION = ("demo", "relu")  # the recipes of results/reproduction/


def seeds_of(results: Path, recipe: str, folders: tuple[str, ...] = ()) -> list[dict]:
    """`scripts/measure_recipe.py`'s records of `recipe` (the demo's runs in results/reproduction/, the other
    recipes' in results/recipes/; or those of `folders`, another machine's), one per seed trained, by seed; not
    its variants (records with extra training flags)."""
    runs = [json.loads(path.read_text()) for folder in folders or RECORDS for path in (results / folder).glob("*.json")]
    return sorted((run for run in runs if run.get("recipe") == recipe and "variant" not in run),
                  key=lambda run: run["training"]["seed"])


def average(runs: list[dict], key: str) -> float:
    """The mean of `key` over the seeds' records."""
    return sum(run[key] for run in runs) / len(runs)


def mean_of(runs: list[dict], key: str) -> str:
    """The mean of `key` over the seeds' records, and with several seeds each seed's value."""
    mean = f"{average(runs, key):.2f}"
    if len(runs) == 1:
        return mean
    return f"{mean} (mean of {len(runs)} seeds: {', '.join(f'{run[key]:.2f}' for run in runs)})"


def demo_rule(runs: list[dict]) -> str:
    """The demo's own certificate (`global`) beside a tighter one, for the MLPs certified in L-inf."""
    run = runs[0]
    if run["norm"] != "linf" or run["training"].get("convs") or run["best_method"] == "global":
        return ""
    return f" ({sum(r['certified']['global'] for r in runs) / len(runs):.2f} global)"


def readme_recipes_table(results: Path) -> str:
    """The README's rows of the recipes measured into results/recipes/: what each is, clean and certified
    (tightest method; the means over seeds where several were trained)."""
    rows = ["| recipe | what it is | clean (%) | certified (%) |", "| --- | --- | --- | --- |"]
    for recipe, words in RECIPE_WORDS.items():
        runs = seeds_of(results, recipe)
        if runs and recipe not in REPRODUCTION:  # the demo's runs have their own table above
            run, count = runs[0], len(runs)
            norm = NORM_NAMES[run["norm"]]
            seeds = f", mean of {count} seeds" if count > 1 else ""
            rows.append(f"| `{recipe}` | {words}; {run['training']['train_seconds'] / 60:.0f} min | "
                        f"{average(runs, 'clean'):.2f} | {average(runs, 'best_certified'):.2f} {method_label(run)}, "
                        f"{norm} {run['radius']:g}{seeds}{demo_rule(runs)} |")
    return "\n".join(rows) + "\n"


def goals_table(results: Path) -> str:
    """Per recipe with a goal: its goal, the field's figure, this repository's certified accuracy and the
    attack's upper bound on the same net, and whether the goal is met (by the mean over the seeds trained)."""
    rows = ["| recipe | ball | goal (%) | the field (%) | certified here (%) | APGD robust here (%) | goal met |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for recipe, ball, goal, field in GOALS:
        runs = seeds_of(results, recipe)
        if not runs:
            rows.append(f"| `{recipe}` | {ball} | {goal} | {field} | not measured | – | no |")
            continue
        certified = average(runs, "best_certified")
        target = float(goal.split()[-1])
        met = certified >= target if goal.startswith("≥") else certified > target
        attacks = attacked(runs[0]) if len(runs) == 1 else mean_of(runs, "attack_robust")
        rows.append(f"| `{recipe}` | {ball} | {goal} | {field} | {mean_of(runs, 'best_certified')} | "
                    f"{attacks} | {'yes' if met else '**no**'} |")
    return "\n".join(rows) + "\n"


FRONTIER = (("cnn-ibp", "convolutional networks"), ("ibp-wide", "measured recipes"),
            ("ibp-gs50", "measured recipes"), ("demo", "the reproduction on the 2-core Intel Xeon, generated"))


def frontier_table(results: Path) -> str:
    """This repository's rows of the frontier at L∞ 0.1: clean / certified by the tightest sound method (means over
    the seeds trained), the tightest certificate alone and APGD's robust accuracy, the training's wall time on
    this CPU, and the section that measured it."""
    rows = ["| model | clean / certified at L∞ 0.1 | cost | source |", "| --- | --- | --- | --- |"]
    for recipe, section in FRONTIER:
        runs = seeds_of(results, recipe)
        if not runs:
            continue
        certificate = {method: sum(run["certified"][method] for run in runs) / len(runs)
                       for method in runs[0]["certified"] if method != "best"}
        alone = max(certificate, key=certificate.get)
        alone = "" if alone == runs[0]["best_method"] else f"{alone} alone {certificate[alone]:.2f}; "
        if not runs[0]["training"].get("convs"):  # an MLP: the demo's own rule too
            alone += f"global {certificate['global']:.2f}; "
        minutes = [run["training"]["train_seconds"] / 60 for run in runs]
        spread = f"{min(minutes):.0f}–{max(minutes):.0f} min a seed" if len(runs) > 1 else f"{minutes[0]:.0f} min"
        seeds = f", mean of {len(runs)} seeds" if len(runs) > 1 else ""
        anchor = "#" + re.sub(r"[^\w -]", "", section).lower().replace(" ", "-")
        rows.append(f"| this repository, `{recipe}`: {RECIPE_WORDS[recipe]} | **{average(runs, 'clean'):.2f} / "
                    f"{average(runs, 'best_certified'):.2f}** {method_label(runs[0])}{seeds} ({alone}APGD robust "
                    f"{average(runs, 'attack_robust'):.2f}) | {spread}, 2-core CPU | [{section}]({anchor}) |")
    return "\n".join(rows) + "\n"


BENCH_PATHS = (("original", "original data path"), ("ours", "this project"),
               ("compiled", "this project, `--compile`"), ("overhead", "this project, a model 10 units wide"))


def performance_table(folder: str) -> Callable[[Path], str]:
    """`bench.py`'s table of results/FOLDER/bench.json (the Intel Xeon's results/performance/, the AMD EPYC's
    results/epyc/performance/)."""
    return lambda results: bench_rows(json.loads((results / folder / "bench.json").read_text()))


def bench_rows(bench: dict) -> str:
    """One `bench.py` record: per data path the median epoch of the default GroupSort training and the GFLOP/s
    its matrix multiplies achieve, against those multiplies alone."""
    median, achieved = bench["median_seconds_per_epoch"], bench["gflops_achieved"]
    rows = [f"| path | s / epoch (median of {bench['epochs_timed']}) | GFLOP/s |", "| --- | --- | --- |"]
    for path, name in BENCH_PATHS:
        if path in median:  # the compiled and 10-unit paths are timed only when asked for
            gflops = f"{achieved[path]:.1f}" if path in achieved else "–"  # the 10-unit model's are not the epoch's
            rows.append(f"| {name} | {median[path]:.2f} | {gflops} |")
    rows.append(f"| the epoch's matrix multiplies alone, same shapes | {bench['matmul_only_seconds_per_epoch']:.2f} | "
                f"{bench['matmul_gflops']:.1f} |")
    return "\n".join(rows) + "\n"


def compile_table(results: Path) -> str:
    """The default run eager (the reproduction's seed 0, results/reproduction/demo.json) and under `--compile`
    (results/performance/compile.json): what training printed, its time and its peak resident memory."""
    runs = {"eager": seeds_of(results, "demo")[0],
            "`--compile`": json.loads((results / "performance" / "compile.json").read_text())}
    rows = ["| run | clean (%) | certified, `global` (%) | training (min) | s / epoch | peak memory (MB) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, run in runs.items():
        training = run["training"]
        rows.append(f"| {name} | {training['clean_accuracy']:.3f} | {training['certified_accuracy']:.3f} | "
                    f"{training['train_seconds'] / 60:.1f} | {training['seconds_per_epoch_median']:.2f} | "
                    f"{training['peak_rss_mb']:.0f} |")
    return "\n".join(rows) + "\n"


def wait_policy_table(folder: str) -> Callable[[Path], str]:
    """`scripts/measure_wait_policy.py` (results/FOLDER/wait_policy.json): per load beside the run and per way
    OpenMP's idle threads wait, the epoch times of two runs of the default training, in the order run."""

    def table(results: Path) -> str:
        record = json.loads((results / folder / "wait_policy.json").read_text())
        cells: dict[str, dict[str, str]] = {}
        for run in record["runs"]:
            times = "; ".join(", ".join(f"{seconds:.2f}" for seconds in attempt) for attempt in run["epoch_seconds"])
            cells.setdefault(run["load"], {})[run["policy"]] = times
        policies = list(dict.fromkeys(run["policy"] for run in record["runs"]))
        rows = ["| load beside the run | " + " | ".join(f"`{policy}` (s / epoch)" for policy in policies) + " |",
                "| --- |" + " --- |" * len(policies)]
        rows += [f"| {load} | " + " | ".join(times[policy] for policy in policies) + " |"
                 for load, times in cells.items()]
        return "\n".join(rows) + "\n"

    return table


def certify_times_table(folder: str, names: tuple[str, ...]) -> Callable[[Path], str]:
    """`scripts/measure_certify_times.py` (results/FOLDER/certify_times_NAME.json, per name): per checkpoint and
    attack, the wall time of `certify.py --method all` on the digits named, every rule's certified accuracy, what
    the attack left robust, and the most certified digits it broke under any one rule (0 for sound certificates)."""

    def table(results: Path) -> str:
        rows = ["| checkpoint | command | digits | wall time (s) | certified (%): global / pairwise / margin / ibp "
                "| robust (%) | certified broken |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name in names:
            record = json.loads((results / folder / f"certify_times_{name}.json").read_text())
            for run in record["runs"]:
                methods = run["table"]
                (robust,) = {row.get("robust") for row in methods.values()}  # one attack: one robust accuracy
                attacked = run["attack"] != "none"
                certified = " / ".join(f"{methods[method]['certified']:.2f}" for method in METHODS)
                rows.append(f"| `{record['checkpoint']}` | `{' '.join(run['flags'])}` | {run['digits']:,} | "
                            f"{run['seconds']:.1f} | {certified} | {f'{robust:.2f}' if attacked else '–'} | "
                            f"{max(row['broken'] for row in methods.values()) if attacked else '–'} |")
        return "\n".join(rows) + "\n"

    return table


def reproduction_allowance_table(folder: str | None = None) -> Callable[[Path], str]:
    """What soundness in float32 costs on the reproduction's seed-0 nets: every method's certified accuracy as
    they run in float32 (results/reproduction/, or results/FOLDER/reproduction/ for another machine's) and in
    float64 (results/allowance/NET_float64.json, or results/FOLDER/allowance/; its allowance is some 1e-9 of
    float32's), and the difference."""

    def table(results: Path) -> str:
        rows = ["| net | method | certified, float32 (%) | certified, float64 (%) | costs (points) |",
                "| --- | --- | --- | --- | --- |"]
        for recipe, name in CERTIFIED_NETS:
            run32 = (seeds_of(results, recipe)[0] if folder is None
                     else json.loads((results / folder / "reproduction" / f"{recipe}.json").read_text()))
            run64 = json.loads((results / (folder or "") / "allowance" / f"{recipe}_float64.json").read_text())
            for method in METHODS:
                n32, n64 = run32["certified"][method], run64["certified"][method]
                rows.append(f"| {name} | {method} | {n32:.2f} | {n64:.2f} | {n64 - n32:.2f} |")
        return "\n".join(rows) + "\n"

    return table


def allowance_size_table(folder: str) -> Callable[[Path], str]:
    """`scripts/measure_allowance.py` on the reproduction's seed-0 nets (results/FOLDER/allowance/NET_size.json):
    the bound on a logit's float32 error over the ball against the error at the test digits themselves."""

    def table(results: Path) -> str:
        rows = ["| net | digits | allowance per logit: median | largest | error at the digits: median | largest | "
                "medians' ratio |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for recipe, name in CERTIFIED_NETS:
            run = json.loads((results / folder / "allowance" / f"{recipe}_size.json").read_text())
            rows.append(f"| {name} | {run['digits']:,} | {run['allowance_median']:.2e} | {run['allowance_max']:.2e} | "
                        f"{run['error_median']:.1e} | {run['error_max']:.1e} | "
                        f"{run['allowance_median'] / run['error_median']:,.0f} |")
        return "\n".join(rows) + "\n"

    return table


def steps_table(recipe: str, folder: str = "steps") -> Callable[[Path], str]:
    """`scripts/bench_step.py --json` on `recipe` (results/FOLDER/RECIPE.json): per variant the median step, the
    step over the plain cross-entropy step's on the same net, and an epoch's worth of such steps; with
    `--profile`, the shares of the operators' own time that matrix products, sorts and the rest took."""

    def table(results: Path) -> str:
        record = json.loads((results / folder / f"{recipe}.json").read_text())
        times = record["milliseconds_per_step"]
        unit = times["--loss ce (the demo's objective)"]
        steps = math.ceil(60_000 / record["batch_size"])
        shares = record.get("time_shares", {})
        groups = sorted(next(iter(shares.values()), {}), key=lambda group: group == "other")  # the rest last
        rows = [f"| variant ({record['threads']} threads, median of {record['rounds']} rounds of {record['steps']} "
                f"steps) | ms per step | × the `ce` step | {steps} steps, one epoch (s) |"
                + "".join(f" {group} (%) |" for group in groups), "| --- " * (4 + len(groups)) + "|"]
        rows += [f"| {name} | {ms:.2f} | {ms / unit:.2f} | {ms * steps / 1000:.1f} |"
                 + "".join(f" {shares[name][group]:.0f} |" for group in groups) for name, ms in times.items()]
        rows += [f"| {name} | not timed: {why} | | |" + " |" * len(groups) for name, why in record["not_timed"].items()]
        return "\n".join(rows) + "\n"

    return table


def cuda_training_table(results: Path) -> str:
    """`scripts/measure_cuda.sh`'s training runs on a GPU (results/cuda/training.json): what ran, the median
    epoch's seconds, the whole training's, and the clean and certified accuracy that training printed."""
    rows = ["| run | flags | epochs | s / epoch | training (s) | clean (%) | certified (%) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in json.loads((results / "cuda" / "training.json").read_text()):
        flags = run["command"].split("--device cuda", 1)[1].strip()
        rows.append(f"| {run['name']} | {f'`{flags}`' if flags else 'the defaults'} | {run['epochs']} | "
                    f"{run['seconds_per_epoch_median']:.2f} | {run['train_seconds']:.0f} | {run['clean_accuracy']:.2f} | {run['certified_accuracy']:.2f} "
                    f"{run['method']}, {NORM_NAMES[run['norm']]} {run['cert_magnitude']:g} |")
    return "\n".join(rows) + "\n"


def ratio(value: float) -> str:
    """A ratio with four decimals, or two significant digits where those would show only zeros."""
    return f"{value:.4f}" if value >= 1e-3 else f"{value:.1e}"


def cuda_certificates_table(results: Path) -> str:
    """`scripts/measure_cuda.py` (results/cuda/certify_cuda*.json): per net, how far the GPU's float32 logits
    stray from the float64 copy's against the rounding allowance, with cuDNN as set up by default and with it
    off (`rounding.exact_arithmetic`), and `measure.certify_split` on the GPU against the CPU."""
    rows = ["| net | digits | cuDNN default: worst error / allowance (digits outside) | cuDNN off: worst error / "
            "allowance (digits outside) | masks differing, GPU vs CPU | certify_split, GPU / CPU (s) |",
            "| --- | --- | --- | --- | --- | --- |"]
    records = [json.loads(path.read_text()) for path in sorted((results / "cuda").glob("certify_cuda*.json"))]
    for record, net in ((record, net) for record in records for net in record["nets"]):
        layers = "convolutional" if net["convs"] else "MLP"
        rows.append(f"| {Path(net['checkpoint']).stem} ({layers}) | {record['digits']} | "
                    f"{ratio(net['cudnn_default_worst_error_over_allowance'])} ({net['cudnn_default_digits_outside']}) | "
                    f"{ratio(net['exact_arithmetic_worst_error_over_allowance'])} "
                    f"({net['exact_arithmetic_digits_outside']}) | {sum(net['masks_differing'].values())} | "
                    f"{net['cuda_seconds']:.2f} / {net['cpu_seconds']:.2f} |")
    return "\n".join(rows) + "\n"


TABLES: dict[str, Callable[[Path], str]] = {
    "recipes": recipes_table, "recipes-goals": goals_table, "readme-recipes": readme_recipes_table,
    "frontier": frontier_table, "reproduction": reproduction_table, "reproduction-epyc": epyc_reproduction_table,
    "readme-reproduction": readme_reproduction_table, "original-checkpoints": original_checkpoints_table,
    "certification": certification_table, "radius-curve": radius_curve_table,
    "marabou": marabou_table,
    "verification-scaling": scaling_table, "verification-pool": pool_table, "verification-all": verification_all_table,
    "verification-here": verification_here_table("verification/xeon"),
    "verification-here-epyc": verification_here_table("epyc/verification"), "verification-epyc": epyc_recipe_table,
    "hard-digits": hard_digits_table, "hard-digits-longer": longer_table, "search-nodes-epyc": search_nodes_table,
    "relaxation-rows-epyc": relaxation_rows_table, "probing-epyc": probing_table, "group-hulls-epyc": group_hulls_table,
    "scip-epyc": scip_table, "lp-solvers-epyc": lp_solvers_table, "verification-presolve": presolve_table,
    "group-bounds": group_bounds_table,
    "deep-allowance": allowance_table("bjorck-deep"), "orthonormal-allowance": allowance_table("orthonormal-l2"),
    "torchlip-allowance": allowance_table("torchlip"), "allowance-rules": allowance_rules_table,
    "orthonormal": seeds_table("orthonormal-l2"),
    "ibp-wide-seeds-epyc": seeds_table("ibp-wide", ("global", "ibp"), ("epyc/recipes",)),
    "l2-methods": methods_table(L2_RECIPES), "l2-methods-epyc": methods_table(("l2", "l2-lmt"), "epyc/recipes"),
    "ibp-gs50-epyc": methods_table(("ibp-gs50",), "epyc/recipes"),
    "ibp-wide-0-3-epyc": methods_table(("ibp-wide-0.3",), "epyc/recipes"),
    "lmt-threads-epyc": threads_table("lmt", ("epyc/recipes", "epyc/recipes_one_thread")),
    "l2-lmt-variants-epyc": variants_table("l2-lmt", "epyc/variants"),
    "l2-probes-epyc": variants_table("l2", "epyc/variants"),
    "ibp-wide-variants-epyc": variants_table("ibp-wide", "epyc/variants"),
    "ibp-wide-0-3-variants-epyc": variants_table("ibp-wide-0.3", "epyc/variants"),
    "ibp-gs50-probes-epyc": variants_table("ibp-gs50", "epyc/variants_one_thread"),
    "bjorck-l2-probes-epyc": variants_table("bjorck-l2", "epyc/variants_one_thread"),
    "seeds-demo": seeds_table("demo", ("global",)), "seeds-relu": seeds_table("relu", ("global",)),
    "wasserstein": wasserstein_table, "wasserstein-seeds": wasserstein_seeds_table,
    "wasserstein-probes-epyc": wasserstein_probes_table("epyc/wasserstein_probes"),
    "gradient-norms": gradient_norms_table,
    "attack-linf": attack_table("linf"), "attack-linf-all": attack_all_digits_table,
    "attack-l2": attack_table("l2"), "attack-l1": attack_table("l1"),
    "attack-l1-epyc": attack_table("l1", "epyc/attacks"),
    "attack-l1-seeds-epyc": attack_seeds_table("l1", (0, 1, 2), "epyc/attacks"),
    "attack-linf-apgd-seeds-epyc": apgd_seeds_table("linf_apgd_seeds", "epyc/attacks"),
    "attack-l2-needles-epyc": needles_table("l2_needles", tuple(range(6)), "epyc/attacks"),
    "steps-cnn-ibp": steps_table("cnn-ibp"), "steps-ibp-wide-epyc": steps_table("ibp-wide", "epyc/steps"),
    "performance": performance_table("performance"), "performance-epyc": performance_table("epyc/performance"),
    "compile": compile_table, "wait-policy": wait_policy_table("performance"),
    "wait-policy-epyc": wait_policy_table("epyc/performance"), "certify-times-epyc": certify_times_table("epyc/performance", ("demo", "original")),
    "certify-l2-demo-epyc": certify_times_table("epyc/performance", ("demo_l2",)),
    "sound-reproduction": reproduction_allowance_table(),
    "sound-reproduction-epyc": reproduction_allowance_table("epyc"), "allowance-size-epyc": allowance_size_table("epyc"),
    "cuda-training": cuda_training_table, "cuda-certificates": cuda_certificates_table,
}
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


FIGURE = re.compile(r"(?<![\w.])\d+\.\d+(?!\.?\d)")  # a decimal figure (not a version's part)
CITED = re.compile(r"results/[\w./-]*")
FENCE = re.compile(r"```.*?```", re.S)
QUOTED = re.compile(r"<!-- quoted: .*? -->")
CODE = re.compile(r"`[^`\n]*`")  # commands, flags, versions: settings, not figures
TYPED = re.compile(r"<!-- typed: .*? -->.*?<!-- typed:end -->", re.S)
QUOTED_BLOCK = re.compile(r"<!-- quoted-block: .*? -->.*?<!-- quoted-block:end -->", re.S)
DECLARED = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", re.S)  # tables made from the code's declarations
# (the recipe flags and files; tests/test_docs.py holds them to it): settings, not results
LINK = re.compile(r"\]\([^)\s]*\)|arXiv:\d{4}\.\d{4,5}")  # a link's target, a paper's arXiv number
SETTINGS = {"0.1", "0.3", "1.58", "0.01", "0.985"}  # the radii and the demo's penalty and decay: settings, not results


def numbers(value: object) -> list[float]:
    """Every number in a parsed JSON value."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [number for item in value for number in numbers(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def figures_in(path: Path) -> set[str]:
    """Every number of a results file (JSON, or CSV cells), as printed with 0 to 4 decimals, rounded to nearest
    or down (a lower bound's way, `rounded_down`)."""
    if path.suffix == ".json":
        values = numbers(json.loads(path.read_text()))
    else:
        values = [float(cell) for cell in re.split(r"[,\s]+", path.read_text()) if FIGURE.fullmatch(cell)]
    return {text for value in values for places in range(5)
            for text in (f"{value:.{places}f}", rounded_down(value, places) if math.isfinite(value) else "")}


def sections(text: str) -> list[str]:
    """The document cut at its second- and third-level headings."""
    return re.split(r"\n(?=#{2,3} )", text)


def unsourced(root: Path = REPO, results: Path | None = None) -> list[str]:
    """The figures of prose that no results file holds, as 'document: heading: figure'.

    In every section, each decimal figure outside its generated tables, code
    blocks, code spans and link targets must be in those tables (as `results`
    makes them) or in a results file the section cites by path (`results/...`).
    Exempt: the `SETTINGS` and the tables made from the code's declarations
    (`DECLARED`); the figures named inside a `<!-- quoted: figures, source -->`
    on their line (the field's figures, the goals, settings, a record as an
    earlier commit held it), or in a block between `<!-- quoted-block:
    sources -->` and `<!-- quoted-block:end -->` (a table of them); and a
    block between `<!-- typed: why -->` and `<!-- typed:end -->` (measured
    before results/ held it, or a probe that wrote no file: still typed, and
    said so).
    """
    results = results or root / "results"
    found = []
    for document in DOCUMENTS:
        for section in sections((root / document).read_text()):
            tables = [match[0] for match in MARKED.finditer(section)]
            known = SETTINGS | set(FIGURE.findall("".join(regenerate(table, results) for table in tables)))
            for cited in CITED.findall(section):
                path = results / cited.removeprefix("results/").rstrip("/.")
                while not path.exists() and path != results:
                    path = path.parent
                if path == results:  # "results/" alone, or a path that names nothing there: no source
                    continue
                files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
                known |= {figure for file in files for figure in figures_in(file)}
            prose = LINK.sub("", CODE.sub("", QUOTED_BLOCK.sub("", TYPED.sub("", FENCE.sub("", DECLARED.sub("", MARKED.sub("", section)))))))
            heading = section.splitlines()[0].lstrip("# ")
            for line in prose.splitlines():
                quoted = {figure for marker in QUOTED.findall(line) for figure in FIGURE.findall(marker)}
                found += [f"{document}: {heading}: {figure}" for figure in FIGURE.findall(QUOTED.sub("", line))
                          if figure not in known | quoted]
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which tables differ from their results")
    args = parser.parse_args(argv)
    if args.check:
        differ = stale()
        if differ:
            raise SystemExit("error: tables differ from results/ (run python scripts/report.py): " + ", ".join(differ))
        loose = unsourced()
        if loose:
            raise SystemExit("error: figures in prose that no table or cited results file holds: " + "; ".join(loose))
        print("every generated table matches results/, and every figure in prose is in its results, quoted or typed")
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
