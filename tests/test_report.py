"""scripts/report.py: every generated table of the documents is what the committed results make of it, and a
changed number in results/ is caught."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import torch

import milp
from conftest import REPO
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, Split

spec = importlib.util.spec_from_file_location("report", REPO / "scripts" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def copied_documents(root):
    """The documents copied under `root`, as a user's edit would leave them; returns the results page."""
    for document in report.DOCUMENTS:
        (root / document).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / document, root / document)
    return root / "docs" / "results.md"


def test_every_generated_table_matches_its_results():
    marked = {match[2] for document in report.DOCUMENTS for match in report.MARKED.finditer((REPO / document).read_text())}
    assert marked == set(report.TABLES)  # every table is placed in some document, so the check is not vacuous
    assert report.stale() == [], "run python scripts/report.py"


def test_a_changed_number_in_the_results_makes_the_check_fail(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    run = results / "wasserstein" / "circles_maxmin.json"
    entries = json.loads(run.read_text())
    entries["certified_lower_bound"] -= 0.001
    run.write_text(json.dumps(entries))
    assert report.stale(REPO, results) == ["docs/results.md: wasserstein"]


def test_another_seed_is_averaged_into_the_goals(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    runs = report.seeds_of(results, "cnn-ibp")
    first = runs[0]
    extra = {**first, "best_certified": first["best_certified"] + 1.0, "attack_robust": first["attack_robust"] - 1.0,
             "training": {**first["training"], "seed": 99}}
    (results / "recipes" / "cnn-ibp_seed99.json").write_text(json.dumps(extra))
    values = [run["best_certified"] for run in runs] + [extra["best_certified"]]
    mean = sum(values) / len(values)
    row = next(line for line in report.goals_table(results).splitlines() if line.startswith("| `cnn-ibp` |"))
    assert f"{mean:.2f} (mean of {len(values)} seeds: {', '.join(f'{v:.2f}' for v in values)})" in row
    assert ("yes" in row) == (mean >= 95)
    assert sorted(report.stale(REPO, results)) == ["README.md: readme-recipes", "docs/results.md: frontier",
                                                   "docs/results.md: recipes", "docs/results.md: recipes-goals"]


def test_every_figure_beside_a_generated_table_is_in_its_results():
    assert report.unsourced() == []


def test_a_figure_in_prose_that_its_results_do_not_hold_is_caught(tmp_path):
    """A measured figure changed in results/ leaves the prose that quotes it flagged; a figure typed into the prose
    of a generated section is flagged; a quoted one, or one in a quoted or typed block, is not."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    run = results / "wasserstein" / "line_fullsort.json"  # a figure that no other results file holds
    entries = json.loads(run.read_text())
    quoted = report.rounded_down(entries["certified_lower_bound"])  # as the table and prose write a lower bound
    assert quoted in (REPO / "docs" / "results.md").read_text()
    entries["certified_lower_bound"] -= 0.01
    entries["estimate"] -= 0.01
    run.write_text(json.dumps(entries))
    assert f"docs/results.md: Wasserstein distances: {quoted}" in report.unsourced(REPO, results)

    root = tmp_path / "repo"
    page = copied_documents(root)
    heading = "### Wasserstein distances\n"
    page.write_text(page.read_text().replace(heading, heading + "\nThe critic certifies 0.4242 here.\n"
                                             "The field's 0.4343, not 0.4545 <!-- quoted: 0.4343, a paper -->\n<!-- typed: old -->\n"
                                             "Earlier 0.4444.\n<!-- typed:end -->\n<!-- quoted-block: two papers -->\n"
                                             "| 0.4646 |\n<!-- quoted-block:end -->\n"))
    flagged = [figure for figure in report.unsourced(root, REPO / "results") if "Wasserstein" in figure]
    assert flagged == ["docs/results.md: Wasserstein distances: 0.4242", "docs/results.md: Wasserstein distances: 0.4545"]


def test_a_figure_in_a_section_without_a_generated_table_is_caught_unless_typed_or_a_setting(tmp_path):
    """Every section is checked, not only those with a generated table: a measured figure there must be typed
    (and say why) or come from the results the section cites; the radii and the demo's settings are not
    results, and neither are a link's target or a paper's arXiv number."""
    root = tmp_path / "repo"
    page = copied_documents(root)
    heading = "## Certificate-aware training\n"
    assert heading in page.read_text() and "<!-- report:" not in report.sections(page.read_text().split(heading)[1])[0]
    page.write_text(page.read_text().replace(heading, heading + "\nTrained at L∞ 0.1, it certifies 12.34 %, "
                                             "as [arXiv:1904.04861](https://x.org/1.25) says. "
                                             "<!-- typed: old -->Once 56.78.<!-- typed:end -->\n"))
    flagged = [figure for figure in report.unsourced(root, REPO / "results") if "Certificate-aware" in figure]
    assert flagged == ["docs/results.md: Certificate-aware training: 12.34"]


def test_a_verified_recipe_shows_exact_verification_its_open_digits_and_the_certificate_alone():
    record = {"best_method": "best", "best_certified": 95.9, "certified": {"best": 95.9, "ibp": 95.7, "global": 0.0},
              "verification": {"verdicts": {"robust": 9590, "counterexample": 405, "timeout": 3, "undecided": 2}}}
    assert report.method_label(record) == "exact (`best`)"
    assert report.method_label(record, open_digits=True) == ("exact (`best`: 3 timeouts, 2 undecided; ibp alone "
                                                             "95.70)")
    assert report.method_label({**record, "best_method": "ibp"}, open_digits=True) == "ibp"


def test_the_reproduction_tables_show_what_training_printed(tmp_path):
    """The demo's rows, in results.md and in the README, give the clean and certified accuracy that training
    printed (results/reproduction/), to the printed decimals; the README's recipes table leaves those runs
    out, and the frontier keeps the demo."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    run = results / "reproduction" / "demo.json"
    entries = json.loads(run.read_text())
    clean, certified = (f"{entries['training'][key]:.3f}" for key in ("clean_accuracy", "certified_accuracy"))
    assert f"{clean} | **{certified}**" in report.reproduction_table(results)
    assert f"**{clean}** | **{certified}**" in report.readme_reproduction_table(results)
    assert "`demo`" not in report.readme_recipes_table(results)
    assert "`demo`" in report.frontier_table(results)
    entries["training"]["certified_accuracy"] += 0.01
    run.write_text(json.dumps(entries))
    assert report.stale(REPO, results) == ["README.md: readme-reproduction", "docs/results.md: reproduction",
                                           "docs/results.md: compile"]


def test_the_original_checkpoints_rows_are_their_records_beside_the_quoted_figures(tmp_path):
    """The original demo's checkpoints: this project's `global` figure (results/reproduction/original/) sits in
    the README beside the original's own, quoted, and every method in results.md; a changed record changes both
    tables and no other."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    run = results / "reproduction" / "original" / "relu.json"
    entries = json.loads(run.read_text())
    quoted = report.ORIGINAL["relu"]["its code, the checkpoint it saved"]
    readme = report.readme_reproduction_table(results)
    assert f"| {quoted[0]:.2f} | {quoted[1]:.2f} |" in readme
    assert f"| {entries['clean']:.2f} | {entries['certified']['global']:.2f} |" in readme
    assert f"| {entries['certified']['ibp']:.2f} |" in report.original_checkpoints_table(results)
    entries["certified"]["global"] -= 0.01
    run.write_text(json.dumps(entries))
    assert report.stale(REPO, results) == ["README.md: readme-reproduction", "docs/results.md: original-checkpoints"]


def test_the_reproductions_seeds_give_their_mean_and_sample_deviation(tmp_path):
    """Another seed's record of the demo joins the README's mean ± std row (n - 1) and the seeds table, and
    leaves the seed-0 rows as they were."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    first = report.seeds_of(results, "demo")[0]
    seed0_rows = report.reproduction_table(results)
    extra = {**first, "training": {**first["training"], "seed": 99,
                                   "certified_accuracy": first["training"]["certified_accuracy"] + 4.0}}
    extra["certified"] = {**first["certified"], "global": first["certified"]["global"] + 4.0}
    (results / "reproduction" / "demo_seed99.json").write_text(json.dumps(extra))
    runs = report.seeds_of(results, "demo")
    values = [run["training"]["certified_accuracy"] for run in runs]
    mean = sum(values) / len(values)
    deviation = (sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5
    readme = report.readme_reproduction_table(results)
    assert f"| GroupSort | the same, {len(runs)} seeds (" in readme and f"± {deviation:.2f} |" in readme
    assert f" {mean:.2f} ± " in next(line for line in readme.splitlines() if "the same, " in line)
    assert report.reproduction_table(results) == seed0_rows
    last = report.seeds_table("demo", ("global",))(results).splitlines()[-1]
    assert last.startswith(f"| mean ± std of {len(runs)} |") and f"{mean:.2f} ± {deviation:.2f}" in last
    assert sorted(report.stale(REPO, results)) == ["README.md: readme-reproduction", "docs/results.md: frontier",
                                                   "docs/results.md: seeds-demo"]


def test_the_performance_tables_come_from_bench_and_the_compiled_run(tmp_path):
    """The epoch times are bench.py's medians; the compiled run's row is its record's, the eager one the
    reproduction's seed 0; the float64 column of the soundness table is its record's, the cost the difference."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    path = results / "performance" / "bench.json"
    bench = json.loads(path.read_text())
    bench["median_seconds_per_epoch"]["ours"], bench["gflops_achieved"]["ours"] = 1.234, 77.7
    path.write_text(json.dumps(bench))
    assert "| this project | 1.23 | 77.7 |" in report.performance_table("performance")(results)
    assert "| this project | 1.23 |" not in report.performance_table("epyc/performance")(results)  # its own record
    path = results / "performance" / "compile.json"
    compiled = json.loads(path.read_text())
    compiled["training"]["certified_accuracy"] = 12.345
    path.write_text(json.dumps(compiled))
    eager = report.seeds_of(results, "demo")[0]["training"]
    rows = report.compile_table(results).splitlines()
    assert rows[2].startswith(f"| eager | {eager['clean_accuracy']:.3f} | {eager['certified_accuracy']:.3f} |")
    assert rows[3].startswith("| `--compile` | ") and "| 12.345 |" in rows[3]
    path = results / "allowance" / "relu_float64.json"
    float64 = json.loads(path.read_text())
    float64["certified"]["margin"] = report.seeds_of(results, "relu")[0]["certified"]["margin"] + 0.5
    path.write_text(json.dumps(float64))
    assert "| ReLU | margin |" in report.reproduction_allowance_table()(results)
    assert [line for line in report.reproduction_allowance_table()(results).splitlines()
            if line.startswith("| ReLU | margin |")][0].endswith("| 0.50 |")
    assert sorted(report.stale(REPO, results)) == ["docs/results.md: compile", "docs/results.md: performance",
                                                   "docs/results.md: sound-reproduction"]


def test_the_certification_suite_comes_from_its_curve_and_whole_ball_records(tmp_path):
    """The radius curve's rows are the CSV's values at the radii shown, and the whole-ball rows the `--domain
    ball` records': a changed value in either makes its table stale, and nothing else."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    curve = results / "certification" / "curves_demo.csv"
    with curve.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    at = next(row for row in rows if float(row["eps"]) == 0.1)
    shown = " | ".join(f"{float(at[m]):.2f}" for m in ("global", "pairwise", "margin", "ibp", "apgd"))
    assert f"| 0.1 | {shown} |" in report.radius_curve_table(results)
    at["ibp"] = f"{float(at['ibp']) - 1:.3f}"
    with curve.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert report.stale(REPO, results) == ["docs/results.md: radius-curve"]
    ball = results / "certification" / "relu_ball.json"
    entries = json.loads(ball.read_text())
    assert f"| ReLU | ibp, whole ball | {entries['clean']:.2f} | {entries['certified']['ibp']:.2f} |" in (
        report.certification_table(results))
    entries["broken_certified"]["ibp"] = 1
    ball.write_text(json.dumps(entries))
    assert report.stale(REPO, results) == ["docs/results.md: certification", "docs/results.md: radius-curve"]


def test_the_verification_table_shows_the_exact_verdicts_of_its_records(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    run = results / "verification" / "xeon" / "relu.json"
    entries = json.loads(run.read_text())
    verdicts = entries["verification"]["verdicts"]
    counts = " / ".join(f"{verdicts[k]:,}" for k in ("robust", "counterexample", "timeout", "undecided"))
    assert f"**{counts}**" in report.verification_here_table("verification/xeon")(results)
    verdicts["timeout"] += 1
    run.write_text(json.dumps(entries))
    assert report.stale(REPO, results) == ["docs/results.md: verification-here"]


def test_results_named_alone_sources_no_figure(tmp_path):
    """"results/" alone (a typed block's reason, say) names no file: the section's figures still need their
    results, so a sentence cannot make the check vacuous by mentioning the folder."""
    root = tmp_path / "repo"
    page = copied_documents(root)
    heading = "### Wasserstein distances\n"
    elsewhere = f"{json.loads((REPO / 'results' / 'attacks' / 'linf.json').read_text())['rows'][0]['robust']:.2f}"
    page.write_text(page.read_text().replace(heading, heading + "\n<!-- typed: measured before results/ -->\nEarlier."
                                             f"\n<!-- typed:end -->\nThe critic certifies {elsewhere} (see `results/`).\n"))
    assert f"docs/results.md: Wasserstein distances: {elsewhere}" in report.unsourced(root, REPO / "results")


def test_the_deep_allowance_table_states_what_soundness_costs(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    runs = {path.stem: json.loads(path.read_text()) for path in (results / "allowance").glob("*.json")}
    cost = runs["bjorck-deep_float64"]["certified"]["margin"] - runs["bjorck-deep_float32"]["certified"]["margin"]
    assert f"**{cost:.2f}** | {'yes' if cost <= 1 else '**no**'} |" in report.allowance_table("bjorck-deep")(results)
    path = results / "allowance" / "bjorck-deep_float32.json"
    runs["bjorck-deep_float32"]["certified"]["margin"] = runs["bjorck-deep_float64"]["certified"]["margin"] - 0.5
    path.write_text(json.dumps(runs["bjorck-deep_float32"]))
    assert "**0.50** | yes |" in report.allowance_table("bjorck-deep")(results)
    assert report.stale(REPO, results) == ["docs/results.md: deep-allowance", "docs/results.md: allowance-rules"]


def test_the_rules_table_sets_each_net_before_the_rules_beside_now_and_float64(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    nets = sorted(path.name.removesuffix("_float32_before_gap_rule.json")
                  for path in (results / "allowance").glob("*_float32_before_gap_rule.json"))
    table = report.allowance_rules_table(results)
    assert [line.split(" | ")[0].strip("| `") for line in table.splitlines()[2:]] == nets
    path = results / "allowance" / "torchlip_float32_before_gap_rule.json"
    before = json.loads(path.read_text())
    best = json.loads((results / "allowance" / "torchlip_float64.json").read_text())["best_method"]
    before["certified"][best] = 40.0
    path.write_text(json.dumps(before))
    row = next(line for line in report.allowance_rules_table(results).splitlines() if "`torchlip`" in line)
    float64 = json.loads((results / "allowance" / "torchlip_float64.json").read_text())["certified"][best]
    assert row.startswith(f"| `torchlip` | 40.00 | ") and f"| {float64 - 40:.2f} |" in row


def test_the_orthonormal_table_gives_the_seeds_mean_and_spread_and_the_allowance_falls_back_to_the_recipe(
        tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    for seed, certified in enumerate((50.0, 52.0, 57.0)):
        path = results / "recipes" / ("orthonormal-l2.json" if seed == 0 else f"orthonormal-l2_seed{seed}.json")
        run = json.loads((REPO / "results" / "recipes" / "orthonormal-l2.json").read_text())
        run["training"]["seed"], run["best_method"] = seed, "margin"
        run["best_certified"] = run["certified"]["margin"] = certified
        path.write_text(json.dumps(run))
    assert "| **53.00 ± 3.61** |" in report.seeds_table("orthonormal-l2")(results)  # the sample deviation of 50, 52, 57
    float64 = json.loads((results / "recipes" / "orthonormal-l2.json").read_text())
    float64["certified"]["margin"], float64["runs_in"] = 51.25, "float64"
    (results / "allowance" / "orthonormal-l2_float64.json").write_text(json.dumps(float64))
    assert "| `margin` | 50.00 | 51.25 | **1.25** | **no** |" in report.allowance_table("orthonormal-l2")(results)


def test_the_steps_table_measures_each_variant_in_ce_steps_and_epochs(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    path = results / "steps" / "cnn-ibp.json"
    record = json.loads(path.read_text())
    record["milliseconds_per_step"] = {"--loss ce (the demo's objective)": 4.0, "the recipe": 10.0}
    record["batch_size"] = 1000  # 60 steps an epoch
    path.write_text(json.dumps(record))
    table = report.steps_table("cnn-ibp")(results)
    assert "| the recipe | 10.00 | 2.50 | 0.6 |" in table and "60 steps, one epoch" in table
    assert report.stale(REPO, results) == ["docs/results.md: steps-cnn-ibp"]
    record["time_shares"] = {name: {"matrix products": 50.4, "other": 29.6, "sorts": 20.0}
                             for name in record["milliseconds_per_step"]}  # as bench_step.py --profile writes them
    path.write_text(json.dumps(record))
    table = report.steps_table("cnn-ibp")(results)
    assert "one epoch (s) | matrix products (%) | sorts (%) | other (%) |" in table
    assert "| the recipe | 10.00 | 2.50 | 0.6 | 50 | 20 | 30 |" in table


def test_a_critic_that_is_not_the_tasks_own_is_named_in_its_cell(tmp_path):
    """The Wasserstein table names a critic's layers and Björck steps where they are not the task's, and a sorting
    start; the seeds table gives each seed's bound and how many reach 0.98."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    run = results / "wasserstein" / "line_maxmin.json"
    entries = json.loads(run.read_text())
    assert "×" not in next(line for line in report.wasserstein_table(results).splitlines() if "`line`" in line)
    entries["critic"] = {**entries["critic"], "hidden": [32, 32, 32], "start": "sorting",
                         "bjorck": {**entries["critic"]["bjorck"], "iterations": 5}}
    run.write_text(json.dumps(entries))
    line = next(line for line in report.wasserstein_table(results).splitlines() if "`line`" in line)
    assert f"| {report.rounded_down(entries['certified_lower_bound'])} (3 × 32, 5 Björck steps, sorting start; " in line
    seed = results / "wasserstein" / "seeds" / "sphere_maxmin_seed2.json"
    entries = json.loads(seed.read_text())
    entries["certified_lower_bound"] = 0.5
    seed.write_text(json.dumps(entries))
    row = next(line for line in report.wasserstein_seeds_table(results).splitlines() if "sorting start" in line)
    assert "| 0.5000 (" in row and row.endswith("| 2 of 3 |")


def test_each_verification_record_is_one_row_naming_its_method(tmp_path):
    """results/verification/xeon/: one row per record, ReLU first, with its method (`best`, `exact`, `lp`) and
    its verdict counts; a changed count changes that table alone."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    records = [json.loads(path.read_text()) for path in (results / "verification" / "xeon").glob("*.json")]
    rows = report.verification_here_table("verification/xeon")(results).splitlines()[2:]
    assert len(rows) == len(records) and {run["verification"]["method"] for run in records} == {"best", "exact", "lp"}
    assert rows[0].startswith("| ReLU, 0.1, 10,000, `best` |") and rows[-1].startswith("| GroupSort, ")
    run = results / "verification" / "xeon" / "relu_first1000_lp.json"
    entries = json.loads(run.read_text())
    entries["verification"]["verdicts"]["undecided"] += 1
    run.write_text(json.dumps(entries))
    assert report.stale(REPO, results) == ["docs/results.md: verification-here"]


def test_the_wait_policy_table_gives_every_epoch_of_every_run_in_order(tmp_path):
    """results/performance/wait_policy.json: one row per load, one column per policy, each run's epochs in the
    order run; a changed epoch changes that table alone."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    path = results / "performance" / "wait_policy.json"
    record = json.loads(path.read_text())
    rows = report.wait_policy_table("performance")(results).splitlines()
    loads = list(dict.fromkeys(run["load"] for run in record["runs"]))
    assert [row.split(" | ")[0].lstrip("| ") for row in rows[2:]] == loads
    first = record["runs"][0]
    assert ", ".join(f"{seconds:.2f}" for seconds in first["epoch_seconds"][0]) in rows[2]
    first["epoch_seconds"][0][0] += 1.0
    path.write_text(json.dumps(record))
    assert report.stale(REPO, results) == ["docs/results.md: wait-policy"]


def test_each_machines_records_make_their_own_tables(tmp_path):
    """The AMD EPYC's records (results/epyc/: reproduction, verification, seeds, thread counts, timings, the
    allowance) and the hard digits' longer runs make their own tables only: a changed number in one record makes
    exactly its table stale, never the Intel Xeon's."""
    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)

    def changed(relative, edit):
        path = results / relative
        entries = json.loads(path.read_text())
        edit(entries)
        path.write_text(json.dumps(entries))
        found = report.stale(REPO, results)
        shutil.copy(REPO / "results" / relative, path)
        return found

    def certified(entries):
        entries["training"]["certified_accuracy"] += 0.01

    def timeout(entries):
        entries["verification"]["verdicts"]["timeout"] += 1

    def bound(entries):
        entries["digits"][0]["highs"]["dual_bound"] -= 0.01

    assert changed("epyc/reproduction/demo.json", certified) == ["docs/results.md: reproduction-epyc"]
    assert changed("epyc/verification/relu.json", timeout) == ["docs/results.md: verification-here-epyc"]
    assert changed("verification/hard_digits_300s.json", bound) == ["docs/results.md: hard-digits-longer"]

    def robust(entries):
        entries["attack_robust"] += 0.01

    def seconds(entries):
        entries["runs"][0]["seconds"] += 1

    def error(entries):
        entries["error_median"] *= 2

    def epoch(entries):
        entries["runs"][0]["epoch_seconds"][0][0] += 0.01

    def ibp(entries):
        entries["certified"]["ibp"] += 0.01

    def share(entries):
        entries["time_shares"]["the recipe"]["sorts"] += 1

    def attack_seconds(entries):
        entries["rows"][0]["seconds"] += 1

    def attack_robust(entries):
        entries["rows"][0]["robust"] += 0.01

    def needle(entries):
        (row,) = [row for row in entries["rows"] if row["net"] == "groupsort" and row["attack"] == "apgd (APGD_DEFAULT)"]
        row["robust_digits"] = [] if row["robust_digits"] else [675]

    def relaxed(entries):
        entries["digits"][0]["ideal_cuts"]["relaxation"] += 0.01

    def probed(entries):
        entries["digits"][0]["probing"]["fixed"] += 1

    def stopped(entries):
        entries["verification"]["timed_out_in"]["lp"] += 1

    def nodes(entries):
        entries["digits"][0]["nodes"] += 1

    def branched(entries):
        entries["digits"][0]["highs"]["nodes"] = 3

    def hull(entries):
        entries["digits"][0]["hull"]["lower"] += 0.01

    def solved(entries):
        entries["digits"][0]["rivals"][0]["dual simplex"]["seconds"] += 1

    def timeout_all(entries):
        entries["verdicts"]["timeout"] += 1

    def critic(entries):
        entries["certified_lower_bound"] -= 0.01

    for relative, edit, table in [
            ("epyc/recipes/ibp-wide_seed1.json", robust, "ibp-wide-seeds-epyc"),
            ("epyc/recipes/lmt.json", robust, "lmt-threads-epyc"),
            ("epyc/performance/certify_times_original.json", seconds, "certify-times-epyc"),
            ("epyc/performance/wait_policy.json", epoch, "wait-policy-epyc"),
            ("epyc/allowance/relu_size.json", error, "allowance-size-epyc"),
            ("epyc/allowance/demo_float64.json", ibp, "sound-reproduction-epyc"),
            ("epyc/variants/l2-lmt+e100.json", robust, "l2-lmt-variants-epyc"),
            ("epyc/variants/l2+lmt-e20.json", robust, "l2-probes-epyc"),
            ("epyc/variants/ibp-wide-0.3+p0.json", robust, "ibp-wide-0-3-variants-epyc"),
            ("epyc/variants/ibp-wide+fcw0.json", robust, "ibp-wide-variants-epyc"),
            ("epyc/variants_one_thread/ibp-gs50+r5-e10.json", robust, "ibp-gs50-probes-epyc"),
            ("epyc/variants_one_thread/bjorck-l2+e8.json", robust, "bjorck-l2-probes-epyc"),
            ("epyc/steps/ibp-wide.json", share, "steps-ibp-wide-epyc"),
            ("epyc/attacks/l1.json", attack_seconds, "attack-l1-epyc"),
            ("epyc/attacks/l1_seed2.json", attack_robust, "attack-l1-seeds-epyc"),
            ("epyc/attacks/linf_apgd_seeds.json", attack_robust, "attack-linf-apgd-seeds-epyc"),
            ("epyc/attacks/l2_needles_seed3.json", needle, "attack-l2-needles-epyc"),
            ("epyc/probes/relaxation_rows.json", relaxed, "relaxation-rows-epyc"),
            ("epyc/probes/relaxation_rows.json", probed, "probing-epyc"),
            ("epyc/ibp-wide.json", stopped, "verification-epyc"),
            ("epyc/ibp-wide_dual_bound.json", timeout, "verification-epyc"),
            ("epyc/groupsort_best_all_dual_bound.json", timeout_all, "verification-all"),
            ("epyc/groupsort_best_all_head.json", timeout_all, "verification-all"),
            ("epyc/groupsort_best_all_pool_again.json", timeout_all, "verification-all"),
            ("epyc/probes/scip.json", nodes, "scip-epyc"),
            ("epyc/probes/group_hulls.json", hull, "group-hulls-epyc"),
            ("epyc/probes/hard_digits_nodes.json", branched, "search-nodes-epyc"),
            ("epyc/probes/lp_solvers_ibp-wide.json", solved, "lp-solvers-epyc"),
            ("epyc/probes/lp_solvers_demo.json", solved, "lp-solvers-epyc"),
            ("epyc/wasserstein_probes/sphere-mm128x12.json", critic, "wasserstein-probes-epyc"),
    ]:
        assert changed(relative, edit) == [f"docs/results.md: {table}"], relative
    shutil.copy(results / "epyc" / "variants" / "l2-lmt+e100.json", results / "recipes")  # a variant is no seed
    assert report.seeds_of(results, "l2-lmt") == report.seeds_of(REPO / "results", "l2-lmt")
    assert report.stale(REPO, results) == []


def test_certify_times_records_what_certify_printed(tmp_path, trained, mnist_root, run_script):
    """scripts/measure_certify_times.py reads certify.py's own table: three runs (no attack, APGD, PGD) on the
    digits asked for, the same certificates in each, a robust accuracy only where there was an attack, none above
    the clean one, and report.py renders the record."""
    checkpoint, _ = trained
    record_path = tmp_path / "results" / "times" / "certify_times_demo.json"
    run = run_script("scripts/measure_certify_times.py", checkpoint, "--data-dir", mnist_root, "--json", record_path,
                     "--", "--limit", "60", "--pgd-steps", "5", "--pgd-restarts", "1")
    assert run.returncode == 0, run.stderr
    runs = json.loads(record_path.read_text())["runs"]
    assert [r["attack"] for r in runs] == ["none", "apgd", "pgd"] and {r["digits"] for r in runs} == {60}
    assert [set(r["table"]) for r in runs] == [{"global", "pairwise", "margin", "ibp"}] * 3
    certified = [{m: row["certified"] for m, row in r["table"].items()} for r in runs]
    assert certified[0] == certified[1] == certified[2]
    assert all("robust" not in row for row in runs[0]["table"].values())
    for r in runs[1:]:
        assert all(row["certified"] <= row["robust"] <= row["clean"] and row["broken"] == 0 for row in r["table"].values())
    extra = ["--limit", "60", "--pgd-steps", "5", "--pgd-restarts", "1"]
    assert [r["flags"] for r in runs] == [["--method", "all", *attack, *extra] for attack in ([], ["--attack"],
                                                                                           ["--attack", "pgd"])]
    table = report.certify_times_table("times", ("demo",))(tmp_path / "results").splitlines()
    assert len(table) == 5 and "| 60 |" in table[3]
    assert "| `--method all --attack pgd --limit 60 --pgd-steps 5 --pgd-restarts 1` |" in table[4]


def test_measure_recipes_passes_a_one_flag_variant_as_the_value_of_variant(tmp_path):
    """FLAGS="--batch-norm" reaches train_mnist.py as its flag and measure_recipe.py as the value of --variant
    (`--variant=--batch-norm`: given apart, argparse takes a lone flag for an option of its own and stops)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "measure_recipes.sh", tmp_path / "scripts")
    stub, log = tmp_path / "python", tmp_path / "argv.jsonl"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "RECIPES": "ibp-wide", "FLAGS": "--batch-norm", "TAG": "bn",
           "RESULTS": str(tmp_path / "results")}
    run = subprocess.run(["bash", str(tmp_path / "scripts" / "measure_recipes.sh")], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    train, measure = [json.loads(line) for line in log.read_text().splitlines()]
    assert train[:5] == ["train_mnist.py", "--recipe", "ibp-wide", "--batch-norm", "--seed"]
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--variant")
    assert parser.parse_known_args(measure[1:])[0].variant == "--batch-norm"


def test_a_recipes_verification_record_says_which_stage_each_timeout_stopped_in(monkeypatch):
    """scripts/measure_recipe.py's verification record: the stage that decided each settled digit, and apart
    from them the stage each timeout stopped in (a relaxation's LP or the mixed-integer search)."""
    spec = importlib.util.spec_from_file_location("measure_recipe", REPO / "scripts" / "measure_recipe.py")
    measure_recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_recipe)
    verdicts = [milp.Verdict("robust", "ibp", 0.1), milp.Verdict("timeout", "milp", 60.0),
                milp.Verdict("counterexample", "apgd", 0.2), milp.Verdict("timeout", "lp", 41.0),
                milp.Verdict("robust", "milp", 3.0), milp.Verdict("timeout", "milp", 60.1)]
    monkeypatch.setattr(milp, "verify_split", lambda *args, **kwargs: verdicts)
    split = Split(torch.zeros(6, 4), torch.zeros(6, dtype=torch.long))
    record, robust = measure_recipe.verify(None, split, Ball("linf", 0.1, PIXEL_RANGE), "best", 60.0, 2)
    assert record["verdicts"]["timeout"] == 3 and record["decided_by"] == {"apgd": 1, "ibp": 1, "milp": 1}
    assert record["timed_out_in"] == {"lp": 1, "milp": 2}
    assert robust.tolist() == [True, False, False, False, True, False]
