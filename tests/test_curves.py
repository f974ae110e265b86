"""curves.py: a radius curve survives its CSV, a file that is not a curve is refused in one line, and plots."""

from __future__ import annotations

import pytest

import cli
import curves
from certify import Row
from curves import Curve, CurveError


def test_a_curve_survives_its_csv(tmp_path):
    rows = [Row(0.0, 90.0, {"global": 90.0, "ibp": 90.0}, 90.0, {"global": 0, "ibp": 0}, attack="apgd"),
            Row(0.05, 90.0, {"global": 41.5, "ibp": 60.25}, 70.125, {"global": 0, "ibp": 0}, attack="apgd")]
    curve = Curve.from_rows("l2", rows, ("global", "ibp"))
    assert curve.eps == [0.0, 0.05] and curve.certified["ibp"] == [90.0, 60.25] and curve.robust == [90.0, 70.125]
    curves.write_csv(tmp_path / "c.csv", curve)
    assert (tmp_path / "c.csv").read_text().splitlines()[0] == "norm,eps,clean,global,ibp,apgd"
    assert curves.read_csv(tmp_path / "c.csv") == curve
    unattacked = Curve.from_rows("linf", [Row(0.1, 80.0, {"margin": 50.0})], ("margin",))
    curves.write_csv(tmp_path / "u.csv", unattacked)
    assert curves.read_csv(tmp_path / "u.csv") == unattacked and unattacked.robust is None


def test_a_malformed_curve_is_a_curve_error(tmp_path):
    (tmp_path / "bad.csv").write_text("norm,eps,clean,global\nlinf,0.1,high,50\n")
    with pytest.raises(CurveError, match="holds a value that is not a number"):
        curves.read_csv(tmp_path / "bad.csv")
    with pytest.raises(CurveError, match="cannot read curve"):
        curves.read_csv(tmp_path / "absent.csv")


def test_titles_must_match_the_curves():
    with pytest.raises(cli.UsageError, match="2 titles for 1 curves"):
        curves.parse_args(["a.csv", "--titles", "x", "y"])


def test_curves_cli_rejects_a_file_that_is_not_a_curve(run_script, tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    run = run_script("curves.py", tmp_path / "other.csv", "--out", tmp_path / "x.png")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "is not a radius-curve CSV" in run.stderr and not (tmp_path / "x.png").exists()
