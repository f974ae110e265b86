"""scripts/report.py: every generated table of the documents is what the committed results make of it, and a
changed number in results/ is caught."""

from __future__ import annotations

import importlib.util
import json
import shutil

from conftest import REPO

spec = importlib.util.spec_from_file_location("report", REPO / "scripts" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


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
