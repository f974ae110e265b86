"""On the genuine MNIST: an L2-trained net, every method and norm, attacked on real test digits; the CLIs."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

import attacks
import certify
import cli
import lipschitz
from certify import LIPSCHITZ_METHODS, METHODS, certified_radii, measure
from mnist_data import PIXEL_RANGE, Split, load_mnist
from models import load_checkpoint

RESULT = re.compile(r"test (acc|certified) on clean examples \(%\): (\d+\.\d{3})$", re.M)
SLICE = 300
RADIUS = {"linf": 0.02, "l2": 1.58}  # this net was trained for L2, so its L-inf certificates are short


@pytest.fixture(scope="module")
def l2_trained(tmp_path_factory, mnist_root, run_script):
    """One epoch of GroupSort with the L2 penalty (seed 0), reported with the margin rule at L2 radius 1.58."""
    out = tmp_path_factory.mktemp("l2")
    run = run_script("train_mnist.py", "--epochs", "1", "--norm", "l2", "--lc_penalty", "0.5",
                     "--cert_magnitude", "1.58", "--method", "margin", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_groupsort.p", run.stdout


@pytest.fixture(scope="module")
def digits(mnist_root) -> Split:
    (test,) = load_mnist(mnist_root, splits=("test",), allow_download=False)
    return Split(test.images[:SLICE], test.labels[:SLICE])


def test_l2_training_certifies_and_records_its_norm_and_method(l2_trained, run_script, mnist_root):
    path, stdout = l2_trained
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["norm"] == "l2" and metrics["method"] == "margin" and metrics["cert_magnitude"] == 1.58
    trained = dict(RESULT.findall(stdout))
    assert float(trained["certified"]) > 5.0  # L2 radius 1.58 after a single epoch
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--norm", "l2", "--cert_magnitude", "1.58",
                     "--method", "margin")
    assert run.returncode == 0, run.stderr
    assert dict(RESULT.findall(run.stdout)) == trained


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_no_certified_test_digit_is_broken_inside_its_own_radius(l2_trained, digits, norm):
    """Each certified digit is attacked just inside its certified radius, for every method."""
    model = load_checkpoint(l2_trained[0]).model
    radii = certified_radii(model, digits, METHODS, norm)
    attacked = 0
    for method in METHODS:
        keep = radii[method] > 0
        domain = PIXEL_RANGE if method == "ibp" else None  # the Lipschitz balls are certified whole
        eps = 0.999 * radii[method][keep]
        broken, _ = attacks.pgd(model, digits.images[keep], digits.labels[keep], eps, norm, steps=20,
                                restarts=2, domain=domain)
        assert not broken.any(), f"{method}: PGD broke {int(broken.sum())} certified digits"
        attacked += int(keep.sum())
    assert attacked > 3 * SLICE  # nearly every digit, by every method
    for weaker, stronger in zip(LIPSCHITZ_METHODS, LIPSCHITZ_METHODS[1:]):
        assert (radii[weaker] <= radii[stronger]).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_certified_never_exceeds_robust_which_never_exceeds_clean(l2_trained, digits, norm):
    model = load_checkpoint(l2_trained[0]).model
    row = measure(model, digits, RADIUS[norm], METHODS, norm, attack="pgd", steps=20, restarts=2)
    assert all(count == 0 for count in row.broken.values())
    assert all(row.certified[m] <= row.robust <= row.clean for m in METHODS)
    assert row.certified["global"] <= row.certified["pairwise"] <= row.certified["margin"]
    assert row.certified["margin"] > 0


def test_certify_cli_table_curves_and_per_example_radii(l2_trained, run_script, mnist_root, tmp_path):
    path, _ = l2_trained
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--method", "all", "--eps", "0", "0.05", "0.1",
                     "--attack", "pgd", "--pgd-steps", "5", "--pgd-restarts", "1", "--limit", "100",
                     "--curves", tmp_path / "curve.csv", "--per-example", tmp_path / "radii.csv")
    assert run.returncode == 0, run.stderr
    assert "L-inf certified accuracy (%) by radius, 100 test examples" in run.stdout
    with (tmp_path / "curve.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["eps"] for row in rows] == ["0", "0.05", "0.1"]
    assert list(rows[0]) == ["norm", "eps", "clean", *METHODS, "pgd"]
    for column in (*METHODS, "pgd"):
        values = [float(row[column]) for row in rows]
        assert values == sorted(values, reverse=True)  # never rises with the radius
        assert all(float(row[m]) <= float(row["pgd"]) <= float(row["clean"]) for row in rows for m in METHODS)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "radii.csv").open() as stream:
        radii = list(csv.DictReader(stream))
    assert len(radii) == 100
    assert list(radii[0]) == ["index", "label", "prediction", "top2_margin",
                              *(f"linf_radius_{m}" for m in METHODS)]
    for row in radii:
        assert float(row["linf_radius_global"]) <= float(row["linf_radius_pairwise"]) <= float(row["linf_radius_margin"])
        correct = row["label"] == row["prediction"]
        assert all((float(row[f"linf_radius_{m}"]) > 0) <= correct for m in METHODS)
    # curves.py draws several saved curves side by side
    plot = run_script("curves.py", tmp_path / "curve.csv", tmp_path / "curve.csv", "--titles", "a", "b",
                      "--out", tmp_path / "both.png")
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"


def test_certify_cli_default_lines_are_the_global_linf_rule(l2_trained, run_script, mnist_root):
    path, _ = l2_trained
    default = run_script("certify.py", path, "--data-dir", mnist_root, "--limit", "2000")
    explicit = run_script("certify.py", path, "--data-dir", mnist_root, "--limit", "2000", "--method", "global",
                          "--norm", "linf", "--cert_magnitude", "0.1")
    assert default.returncode == 0, default.stderr
    assert default.stdout == explicit.stdout and len(RESULT.findall(default.stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (["--eps", "0.1", "--cert_magnitude", "0.1"], "error: give one radius with --cert_magnitude or several"),
    (["--method", "crown"], "invalid choice: 'crown'"),
    (["--norm", "l3"], "invalid choice: 'l3'"),
    (["--eps", "-1"], "-1 must be >= 0.0"),
])
def test_certify_cli_bad_flags_are_one_line_and_exit_status_2(capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_status:
        cli.run(lambda: certify.main([str(tmp_path / "never-read.p"), *args]))
    assert exit_status.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def test_curves_cli_rejects_a_file_that_is_not_a_curve(run_script, tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    run = run_script("curves.py", tmp_path / "other.csv", "--out", tmp_path / "x.png")
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "is not a radius-curve CSV" in run.stderr and not (tmp_path / "x.png").exists()


def test_l2_bounds_of_the_trained_net_use_the_spectral_product(l2_trained):
    """After L2 training the operator-norm bound is the active one: it must be exact, not estimated."""
    model = load_checkpoint(l2_trained[0]).model
    unit, whole = model.lp_hidden_bounds("l2")
    first = model.layers[0].weight
    assert whole <= lipschitz.lp_operator_norm(first, "l2") * (1 + 1e-6)
    with torch.no_grad():
        assert torch.allclose(whole, torch.linalg.svdvals(first)[0])
