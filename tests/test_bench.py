"""bench.py runs every path on the real MNIST and reports figures that agree with each other.

Only the structure and the arithmetic between the figures are checked, never a timing.
"""

from __future__ import annotations

import json

import pytest


def test_bench_times_every_path_and_bounds_stacked_seeds(tmp_path, mnist_root, run_script):
    out = tmp_path / "bench.json"
    run = run_script("bench.py", "--data-dir", mnist_root, "--epochs", "1", "--compile", "--seeds", "3",
                     "--json", out, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["command"].startswith("python bench.py --data-dir") and result["threads"] >= 1  # its provenance
    assert {"machine", "torch", "date"} <= set(result)
    median = result["median_seconds_per_epoch"]
    assert set(median) == {"original", "ours", "compiled", "overhead"}
    assert set(result["gflops_achieved"]) == {"original", "ours", "compiled"}
    assert result["speedup"] == pytest.approx(median["original"] / median["ours"])
    assert result["gflop_per_epoch"] == pytest.approx(95.88)  # 60,000 x 2 x (2 x 397,000 + 5,000) FLOP
    seeds = result["seeds"]
    assert seeds["count"] == 3
    assert seeds["overhead_seconds_per_epoch"] == median["overhead"]
    assert seeds["lower_bound_seconds_per_epoch"] == pytest.approx(median["overhead"] + 3 * (median["ours"] - median["overhead"]))
    assert seeds["lower_bound_ratio"] * median["ours"] == pytest.approx(seeds["lower_bound_seconds_per_epoch"])
    assert "speed-up:" in run.stdout and "3 seeds at once, at best:" in run.stdout


def test_bench_step_times_every_variant_and_shares_a_profiled_step(tmp_path, mnist_root, run_script):
    """scripts/bench_step.py: a median for each variant, and with --profile where each variant's step went, the
    shares of matrix products, sorts (GroupSort's) and the rest adding up to 100 %."""
    out = tmp_path / "steps.json"
    run = run_script("scripts/bench_step.py", "--data-dir", mnist_root, "--recipe", "ibp-gs50", "--rounds", "1",
                     "--steps", "2", "--profile", "--json", out, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    variants = {"the recipe", "--precision bfloat16", "--batch-norm", "--loss ce (the demo's objective)"}
    assert set(result["milliseconds_per_step"]) == set(result["time_shares"]) == variants
    assert all(ms > 0 for ms in result["milliseconds_per_step"].values())
    for shares in result["time_shares"].values():
        assert set(shares) == {"matrix products", "sorts", "other"} and sum(shares.values()) == pytest.approx(100)
        assert shares["matrix products"] > 0 and shares["sorts"] > 0 and shares["other"] > 0
    assert "matrix products" in run.stdout
