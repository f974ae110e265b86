"""certify.py on the genuine MNIST: it reproduces the training numbers, reads the original demo's state_dict,
measures every method and norm against PGD on real test digits, writes tables, curves and per-example radii, and
fails in one line on bad input."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import allowance
import attacks
import certify
from measure import Row
import cli
import measure
import milp
from certificates import LIPSCHITZ_METHODS, METHODS
from checkpoints import Expected, load_checkpoint, save_checkpoint
from conftest import L2_RADIUS, OFFLINE_ENV, ORIGINAL_DEMO, REPO, assert_one_line_failure, results
from lipschitz import Ball
from mnist_data import PIXEL_RANGE, Split, load_mnist

SLICE = 300  # test digits attacked in process
RADIUS = {"linf": 0.02, "l2": L2_RADIUS}  # the L2-trained net's L-inf certificates are short


def as_original_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A one-hidden-layer model's weights under the original demo's ShallowNet names (spelt out, not taken
    from checkpoints.ORIGINAL_KEYS, which this checks)."""
    return {"inlayer.weight": state["layers.0.weight"], "inlayer.bias": state["layers.0.bias"],
            "outlayer.weight": state["layers.2.weight"], "outlayer.bias": state["layers.2.bias"]}


# Against the training script's own numbers.

def test_certify_cli_reproduces_the_training_numbers(trained, run_script, mnist_root):
    path, stdout = trained
    run = run_script("certify.py", path, "--data-dir", mnist_root)
    assert run.returncode == 0, run.stderr
    assert results(run.stdout) == results(stdout)


def test_certify_cli_at_a_smaller_radius_certifies_no_fewer(trained, run_script, mnist_root):
    path, stdout = trained
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--cert_magnitude", "0.05")
    smaller = results(run.stdout)
    assert smaller["acc"] == results(stdout)["acc"]
    assert smaller["certified"] >= results(stdout)["certified"]


def test_certify_cli_accepts_the_original_demos_bare_state_dict(trained, run_script, mnist_root, tmp_path):
    path, stdout = trained
    torch.save(as_original_state_dict(load_checkpoint(path).model.state_dict()), tmp_path / "original.p")
    run = run_script("certify.py", tmp_path / "original.p", "--data-dir", mnist_root,
                     "--activation", "groupsort", "--group_size", "10")
    assert run.returncode == 0, run.stderr
    assert results(run.stdout) == results(stdout)
    # the same weights read as a ReLU net are a different function
    relu = run_script("certify.py", tmp_path / "original.p", "--data-dir", mnist_root, "--activation", "relu")
    assert results(relu.stdout) != results(stdout)


@pytest.mark.parametrize("name, flags, figures", [
    ("groupsort.p", ["--activation", "groupsort", "--group_size", "10"], {"acc": 97.18, "certified": 74.13}),
    ("relu.p", ["--activation", "relu"], {"acc": 93.13, "certified": 9.88}),
], ids=["groupsort", "relu"])
def test_the_original_demos_own_checkpoints_certify_to_its_figures(name, flags, figures, original_demo, run_script,
                                                                   mnist_root):
    """The figures of ../shared/original-demo/README.md, measured by the original code on its own files: the
    same clean accuracy, and at most 0.05 points fewer certified, the price of holding in float32 arithmetic."""
    run = run_script("certify.py", original_demo / name, *flags, "--data-dir", mnist_root)
    assert run.returncode == 0, run.stderr
    measured = results(run.stdout)
    assert measured["acc"] == figures["acc"]
    assert figures["certified"] - 0.05 <= measured["certified"] <= figures["certified"]


# On real test digits, in process.

@pytest.fixture(scope="module")
def digits(mnist_root) -> Split:
    (test,) = load_mnist(mnist_root, splits=("test",), allow_download=False)
    return test.head(SLICE)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_no_certified_test_digit_is_broken_inside_its_own_radius(l2_trained, digits, norm):
    """Each certified digit is attacked just inside its certified radius, for every method."""
    model = load_checkpoint(l2_trained[0]).model
    radii = measure.certified_radii(model, digits, METHODS, norm, PIXEL_RANGE)
    attacked = 0
    for method in METHODS:
        keep = radii[method] > 0
        domain = PIXEL_RANGE if method == "ibp" else None  # the Lipschitz balls are certified whole
        eps = 0.999 * radii[method][keep]
        broken, _ = attacks.pgd(model, digits.images[keep], digits.labels[keep], Ball(norm, eps, domain), steps=20,
                                restarts=2)
        assert not broken.any(), f"{method}: PGD broke {int(broken.sum())} certified digits"
        attacked += int(keep.sum())
    assert attacked > 3 * SLICE  # nearly every digit, by every method
    for weaker, stronger in zip(LIPSCHITZ_METHODS, LIPSCHITZ_METHODS[1:]):
        assert (radii[weaker] <= radii[stronger]).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_certified_never_exceeds_robust_which_never_exceeds_clean(l2_trained, digits, norm):
    model = load_checkpoint(l2_trained[0]).model
    row = measure.measure(model, digits, Ball(norm, RADIUS[norm], PIXEL_RANGE), METHODS, attack="pgd", steps=20,
                          restarts=2)
    assert row.eps == RADIUS[norm]
    assert all(count == 0 for count in row.broken.values())
    assert all(row.certified[m] <= row.robust <= row.clean for m in METHODS)
    assert row.certified["global"] <= row.certified["pairwise"] <= row.certified["margin"]
    assert row.certified["margin"] > 0
    table = certify.table([row], METHODS, norm, len(digits))
    assert table.splitlines()[0].startswith(f"{'L-inf' if norm == 'linf' else 'L2'} radius {RADIUS[norm]!r}, "
                                            f"{SLICE} test examples")
    assert len(table.splitlines()) == 2 + len(METHODS)


def test_a_network_run_in_float64_certifies_no_less_and_stays_unbroken(l2_trained, digits):
    """--runs-in float64 certifies the float64 copy: its allowance is some 1e-9 of float32's, so no method
    certifies fewer digits, the clean digits are the same, and the attack on the float64 net breaks none."""
    model = load_checkpoint(l2_trained[0]).model
    ball = Ball("l2", RADIUS["l2"], PIXEL_RANGE)
    rows = {dtype: measure.measure(model.to(dtype), Split(digits.images.to(dtype), digits.labels), ball, METHODS,
                                   attack="pgd", steps=20, restarts=2) for dtype in (torch.float32, torch.float64)}
    single, double = rows[torch.float32], rows[torch.float64]
    assert double.clean == single.clean and all(count == 0 for count in double.broken.values())
    assert all(double.certified[m] >= single.certified[m] for m in METHODS)
    x = digits.images[:16].double()
    allowances = [allowance.logit_allowance(model.double(), x, ball, runs_in) for runs_in in (torch.float32, torch.float64)]
    assert (allowances[1] < 1e-6 * allowances[0]).all()


# The command line.

@pytest.mark.parametrize("shift", [1e5, 1e7])
def test_certify_cli_breaks_no_certificate_of_a_net_with_huge_output_biases(shift, small_checkpoint, run_script,
                                                                           mnist_root, tmp_path):
    """A constant added to every output bias changes no gap in exact arithmetic, but float32 logits near 1e5
    round to multiples of 1/128, and near 1e7 to whole numbers: there the rule checked in float32 (before
    rounding was bounded) certified digits that PGD broke. Near 1e5 every method still certifies some;
    near 1e7, where a sum of 101 terms can be off by 50, none."""
    checkpoint = load_checkpoint(small_checkpoint)
    with torch.no_grad():
        checkpoint.model.layers[-1].bias.add_(shift)
    save_checkpoint(tmp_path / "shifted.p", checkpoint.model, checkpoint.metrics)
    run = run_script("certify.py", tmp_path / "shifted.p", "--data-dir", mnist_root, "--method", "all",
                     "--cert_magnitude", "0.02", "--attack", "pgd", "--pgd-steps", "10", "--pgd-restarts", "2",
                     "--limit", "200")
    assert run.returncode == 0, run.stderr
    rows = {line.split()[0]: line.split() for line in run.stdout.splitlines()[2:]}
    assert set(rows) == set(METHODS)
    assert all(rows[m][4] == "0" for m in METHODS)  # broken by pgd
    assert all((float(rows[m][2]) > 0) == (shift < 1e6) for m in METHODS)


def test_certify_cli_exact_and_best_verdicts_csv_and_counterexample_grid(small_checkpoint, run_script, mnist_root,
                                                                         tmp_path):
    """The small GroupSort net at L-inf 0.03 on 30 digits: every verdict is counted, the CSV has one row per
    digit, each counterexample digit is one that PGD or the program found, and both grids are PNGs."""
    verdicts = {}
    for method in ("exact", "best"):
        csv_path, png = tmp_path / f"{method}.csv", tmp_path / f"{method}.png"
        run = run_script("certify.py", small_checkpoint, "--data-dir", mnist_root, "--method", method,
                         "--cert_magnitude", "0.03", "--limit", "30", "--time-limit", "2", "--pgd-steps", "10",
                         "--pgd-restarts", "1", "--per-example", csv_path, "--save-adversarial", png)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].startswith(f"L-inf radius 0.03, 30 test examples within the pixel range [0, 1]; {method}")
        counts = {line.split()[0]: int(line.split()[1]) for line in lines[2:6]}
        assert list(counts) == list(milp_verdicts()) and sum(counts.values()) == 30
        with csv_path.open() as stream:
            rows = list(csv.DictReader(stream))
        assert [int(r["index"]) for r in rows] == list(range(30))
        assert {r["verdict"] for r in rows} <= set(counts) and counts["robust"] > 10
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        verdicts[method] = [r["verdict"] for r in rows]
    settled = [i for i in range(30) if "timeout" not in (verdicts["exact"][i], verdicts["best"][i])]
    assert all(verdicts["exact"][i] == verdicts["best"][i] for i in settled)


def milp_verdicts() -> tuple[str, ...]:
    import milp

    return milp.VERDICTS


def test_certify_cli_table_curves_and_per_example_radii(l2_trained, run_script, mnist_root, tmp_path):
    path, _ = l2_trained
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--method", "all", "--eps", "0", "0.05", "0.1",
                     "--attack", "pgd", "--pgd-steps", "5", "--pgd-restarts", "1", "--limit", "100",
                     "--curves", tmp_path / "curve.csv", "--per-example", tmp_path / "radii.csv")
    assert run.returncode == 0, run.stderr
    assert "L-inf certified accuracy (%) by radius, 100 test examples" in run.stdout
    with (tmp_path / "curve.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert [row["eps"] for row in rows] == ["0.0", "0.05", "0.1"]
    assert list(rows[0]) == ["norm", "eps", "clean", *METHODS, "pgd"]
    for column in (*METHODS, "pgd"):
        values = [float(row[column]) for row in rows]
        assert values == sorted(values, reverse=True)  # never rises with the radius
        assert all(float(row[m]) <= float(row["pgd"]) <= float(row["clean"]) for row in rows for m in METHODS)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((tmp_path / "curve.csv.json").read_text())  # what the curve ran with, beside it
    assert record["command"].startswith("python certify.py ") and "--eps 0 0.05 0.1" in record["command"]
    assert record["examples"] == 100 and record["domain"] == "pixels" and record["machine"] and record["date"]
    with (tmp_path / "radii.csv").open() as stream:
        radii = list(csv.DictReader(stream))
    assert len(radii) == 100
    assert list(radii[0]) == ["index", "label", "prediction", "top2_margin",
                              *(f"linf_radius_{m}" for m in METHODS)]
    for row in radii:
        assert float(row["linf_radius_global"]) <= float(row["linf_radius_pairwise"]) <= float(row["linf_radius_margin"])
        correct = row["label"] == row["prediction"]
        assert all((float(row[f"linf_radius_{m}"]) > 0) <= correct for m in METHODS)
    # every radius as written certifies its example when fed back as eps
    model = load_checkpoint(path).model
    (test,) = load_mnist(mnist_root, splits=("test",), allow_download=False)
    for method in METHODS:
        written = torch.tensor([float(row[f"linf_radius_{method}"]) for row in radii], dtype=torch.float64)
        assert (written > 0).sum() > 20
        ball = Ball("linf", written, PIXEL_RANGE if method == "ibp" else None)
        assert measure.certify_split(model, test.head(100), ball, (method,))[method][written > 0].all()
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
    assert default.stdout == explicit.stdout and len(results(default.stdout)) == 2


@pytest.mark.parametrize("args, message", [
    (["--eps", "0.1", "--cert_magnitude", "0.1"], "error: give one radius with --cert_magnitude or several"),
    (["--method", "crown"], "invalid choice: 'crown'"),
    (["--norm", "l3"], "invalid choice: 'l3'"),
    (["--eps", "-1"], "-1 must be >= 0.0"),
    (["--cert_magnitude", "inf"], "inf is not finite"),
    (["--pgd-steps", "1.5"], "'1.5' is not an int"),
    (["--runs-in", "float64", "--method", "exact"], "exact, best and --export-vnnlib take the float32 network only"),
    (["--runs-in", "float16"], "invalid choice: 'float16'"),
])
def test_certify_cli_bad_flags_are_one_line_and_exit_status_2(capsys, tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_status:
        cli.run(lambda: certify.main([str(tmp_path / "never-read.p"), *args]))
    assert exit_status.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


def not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.p"
    path.write_text("just text")
    return path


def truncated_checkpoint(tmp_path, source):
    path = tmp_path / "cut.p"
    path.write_bytes(source.read_bytes()[:2000])
    return path


def altered_original(name: str, change) -> Callable[[Path, Path], Path]:
    """A case maker: the original demo's groupsort.p with one entry changed by `change`, saved under tmp."""

    def make(tmp: Path, ckpt: Path) -> Path:
        state = torch.load(ORIGINAL_DEMO / "groupsort.p", weights_only=True)
        state[name] = change(state[name].clone())
        torch.save(state, tmp / "altered.p")
        return tmp / "altered.p"

    return make


def altered_project(change) -> Callable[[Path, Path], Path]:
    """A case maker: the small project checkpoint with its payload changed by `change`, saved under tmp."""

    def make(tmp: Path, ckpt: Path) -> Path:
        payload = torch.load(ckpt, weights_only=True)
        change(payload)
        torch.save(payload, tmp / "altered.p")
        return tmp / "altered.p"

    return make


def with_nan(weight: torch.Tensor) -> torch.Tensor:
    weight[0, 0] = float("nan")
    return weight


def foreign_checkpoint(tmp_path):
    path = tmp_path / "foreign.p"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    return path


DEMO_FLAGS = ["--activation", "groupsort", "--group_size", "10"]  # what an original demo file needs said
CERTIFY_CASES = {
    "missing checkpoint": (lambda tmp, ckpt: tmp / "absent.p", [], "does not exist"),
    "folder as checkpoint": (lambda tmp, ckpt: tmp, [], "is a folder"),
    "text file": (lambda tmp, ckpt: not_a_checkpoint(tmp), [], "not a readable PyTorch checkpoint"),
    "truncated checkpoint": (truncated_checkpoint, [], "not a readable PyTorch checkpoint"),
    "another model's state_dict": (lambda tmp, ckpt: foreign_checkpoint(tmp), [],
                                   "not a checkpoint of this project or of the original demo: it is a bare "
                                   "state_dict without the configuration"),
    "a training state": (lambda tmp, ckpt: ckpt.with_suffix(".last.p"), [],
                         "it is a training state (.last.p), which train_mnist.py --resume continues"),
    "wrong hidden width": (lambda tmp, ckpt: ckpt, ["--hidden", "500"], "trained with hidden (100,), not (500,)"),
    "wrong activation": (lambda tmp, ckpt: ckpt, ["--activation", "relu"], "trained with activation groupsort, not relu"),
    "wrong group size": (lambda tmp, ckpt: ckpt, ["--group_size", "5"], "trained with group_size 10, not 5"),
    "negative radius": (lambda tmp, ckpt: ckpt, ["--cert_magnitude", "-1"], "must be >= 0.0"),
    "wrong normalisation": (lambda tmp, ckpt: ckpt, ["--std", "0.3081"],
                            "trained with normalisation (0.1307, 1.0), not (0.1307, 0.3081)"),
    "unknown method": (lambda tmp, ckpt: ckpt, ["--method", "crown"], "argument --method: invalid choice: 'crown'"),
    "exact in L2": (lambda tmp, ckpt: ckpt, ["--method", "exact", "--norm", "l2"],
                    "--method exact verifies L-inf balls only (an L2 ball is not linear): give --norm linf"),
    "exact over several radii": (lambda tmp, ckpt: ckpt, ["--method", "lp", "--eps", "0.1", "0.2"],
                                 "--method lp verifies one radius: give --cert_magnitude, not --eps"),
    "a grid with nothing to draw": (lambda tmp, ckpt: ckpt, ["--save-adversarial", "x.png"],
                                    "--save-adversarial draws counterexamples: add --attack pgd"),
    "counterexamples in an unknown format": (lambda tmp, ckpt: ckpt, ["--save-adversarial", "x.jpg", "--attack", "pgd"],
                                             "--save-adversarial x.jpg: name a .pt or .npz file"),
    "zero time limit": (lambda tmp, ckpt: ckpt, ["--method", "exact", "--time-limit", "0"], "must be > 0"),
    "unknown norm": (lambda tmp, ckpt: ckpt, ["--norm", "l7"], "argument --norm: invalid choice: 'l7'"),
    "original demo with a NaN weight": (altered_original("inlayer.weight", with_nan), DEMO_FLAGS,
                                        "holds non-finite values (NaN or inf) in layers.0.weight"),
    "original demo with an infinite bias": (altered_original("outlayer.bias", lambda b: b.fill_(float("inf"))), DEMO_FLAGS,
                                            "holds non-finite values (NaN or inf) in layers.2.bias"),
    "original demo with a 1-D weight": (altered_original("inlayer.weight", lambda w: w[0]), DEMO_FLAGS,
                                        "the original demo's are matrices"),
    "original demo with another input width": (altered_original("inlayer.weight", lambda w: w[:, :700]), DEMO_FLAGS,
                                               "takes 700 inputs, but MNIST images have 784 pixels"),
    "original demo with mismatched layers": (altered_original("outlayer.weight", lambda w: w[:, :400]), DEMO_FLAGS,
                                             "does not fit the architecture: size mismatch for layers.2.weight"),
    "checkpoint without state_dict": (altered_project(lambda p: p.pop("state_dict")), [], "incomplete checkpoint"),
    "config without group_size": (altered_project(lambda p: p["config"].pop("group_size")), [],
                                  "incomplete checkpoint: it lacks group_size"),
    "per-example into a folder": (lambda tmp, ckpt: ckpt, ["--per-example", "."], "is a folder: give a file name"),
    "original demo without its activation": (lambda tmp, ckpt: ORIGINAL_DEMO / "relu.p", [],
                                             "records no activation: give --activation relu, or --activation "
                                             "groupsort --group_size 10"),
    "original demo, groupsort without its group size": (lambda tmp, ckpt: ORIGINAL_DEMO / "groupsort.p",
                                                         ["--activation", "groupsort"], "records no activation"),
}


@pytest.mark.parametrize("case", CERTIFY_CASES, ids=list(CERTIFY_CASES))
def test_certify_bad_input(case, small_checkpoint, original_demo, run_script, mnist_root, tmp_path):
    make_path, flags, fragment = CERTIFY_CASES[case]
    run = run_script("certify.py", make_path(tmp_path, small_checkpoint), *flags, "--data-dir", mnist_root)
    assert_one_line_failure(run, fragment)
    assert run.stdout == ""


def test_certify_original_state_dict_with_the_wrong_width(small_checkpoint, run_script, mnist_root, tmp_path):
    state = torch.load(small_checkpoint, weights_only=True)["state_dict"]
    torch.save(as_original_state_dict(state), tmp_path / "original.p")
    run = run_script("certify.py", tmp_path / "original.p", "--hidden", "500", "--activation", "relu",
                     "--data-dir", mnist_root)
    assert_one_line_failure(run, "has hidden width 100, not (500,)")


def test_certify_output_that_cannot_be_written_is_one_line(small_checkpoint, run_script, mnist_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = run_script("certify.py", small_checkpoint, "--data-dir", mnist_root, "--limit", "50",
                     "--per-example", blocker / "radii.csv")
    assert_one_line_failure(run, f"{blocker / 'radii.csv'} cannot be written: {blocker} is a file")
    assert sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.parametrize("suffix, flags, least", [
    (".pt", ["--method", "all", "--attack", "pgd", "--pgd-steps", "10", "--pgd-restarts", "1", "--limit", "40"], 9),
    (".npz", ["--method", "exact", "--time-limit", "5", "--workers", "1", "--limit", "12"], 2)])
def test_saved_counterexamples_load_and_each_is_misclassified_inside_its_ball(suffix, flags, least, small_checkpoint,
                                                                               original_demo, run_script, mnist_root,
                                                                               tmp_path):
    """Every counterexample found, not only the first 8 (PGD's), or the exact program's: the file loads with
    torch.load(weights_only=True) or numpy.load, and each input lies in the L-inf ball of its digit and in
    [0, 1], and the float32 network predicts the recorded class there, not the label."""
    path = tmp_path / f"found{suffix}"
    checkpoint = small_checkpoint if suffix == ".pt" else original_demo / "relu.p"  # whose programs settle fast
    architecture = [] if suffix == ".pt" else ["--activation", "relu"]
    run = run_script("certify.py", checkpoint, *architecture, "--data-dir", mnist_root, "--cert_magnitude", "0.1",
                     "--save-adversarial", path, *flags)
    assert run.returncode == 0, run.stderr
    if suffix == ".pt":
        saved = torch.load(path, weights_only=True)
    else:
        import numpy as np

        saved = {name: str(value) if value.dtype.kind == "U" else torch.as_tensor(value)
                 for name, value in np.load(path).items()}
    count = len(saved["index"])
    assert f"wrote {path} ({count} counterexamples)" in run.stdout and count >= least
    assert float(saved["radius"]) == 0.1 and str(saved["norm"]) == "linf"
    model = load_checkpoint(checkpoint, Expected(*architecture[1:])).model
    (test,) = load_mnist(mnist_root, splits=("test",))
    inputs = saved["input"]
    assert inputs.dtype == torch.float32 and inputs.shape == (count, 784)
    originals = test.images[saved["index"]]
    assert ((inputs.double() - originals.double()).abs().amax(dim=1) <= 0.1).all() and ((inputs >= 0) & (inputs <= 1)).all()
    assert torch.equal(test.labels[saved["index"]], saved["label"])
    with torch.no_grad():
        predicted = model(inputs).argmax(dim=1)
    assert torch.equal(predicted, saved["predicted"]) and (predicted != saved["label"]).all()


def test_the_table_says_where_ibp_and_the_attack_look_and_names_only_what_ran():
    plain = Row(0.1, 90.0, {"global": 70.0, "ibp": 80.0})
    attacked = Row(0.1, 90.0, {"global": 70.0, "ibp": 80.0}, 85.0, {"global": 0, "ibp": 0}, attack="apgd")
    assert "; ibp within the pixel range [0, 1]" in certify.table([plain], ("global", "ibp"), "linf", 10)
    assert "pgd" not in certify.table([plain], ("global", "ibp"), "linf", 10)
    assert "; ibp and apgd in the whole ball" in certify.table([attacked], ("global", "ibp"), "linf", 10, "ball")
    lipschitz_only = Row(0.1, 90.0, {"global": 70.0})
    assert "within" not in certify.table([lipschitz_only], ("global",), "linf", 10)


@pytest.mark.parametrize("sig, workers", [(signal.SIGINT, 2), (signal.SIGTERM, 1)], ids=["ctrl-c, 2 workers", "term"])
def test_an_interrupted_verification_writes_the_verdicts_it_reached(sig, workers, small_checkpoint, mnist_root,
                                                                     tmp_path):
    """Ctrl-C (or a scheduler's SIGTERM) during a long `exact` run: one line saying how many examples were
    verified, their verdicts in the per-example CSV and its record, no traceback, and the signal's exit status."""
    out = tmp_path / "exact.csv"
    args = [sys.executable, str(REPO / "certify.py"), str(small_checkpoint), "--method", "exact", "--time-limit", "5",
            "--workers", str(workers), "--data-dir", str(mnist_root), "--per-example", str(out)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=OFFLINE_ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's
    time.sleep(15)  # started, and some of the 10,000 digits verified (GroupSort programs: a second or more each)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == (130 if sig == signal.SIGINT else 128 + sig), ("not interrupted", stderr)
    assert "Traceback" not in stderr
    done = int(re.search(r"interrupted: (\d+) of 10000 examples verified", stderr)[1])
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == done and 0 < done < 10_000 and f"wrote {out}" in stdout
    indices = [int(row["index"]) for row in rows]
    assert indices == sorted(set(indices)) and all(row["verdict"] in milp.VERDICTS for row in rows)
    assert json.loads(out.with_name(out.name + ".json").read_text())["method"] == "exact"
    merged = subprocess.run([sys.executable, str(REPO / "certify.py"), "--merge", str(tmp_path / "m.csv"), str(out)],
                            capture_output=True, text=True, env=OFFLINE_ENV)
    assert merged.returncode == 2 and "does not hold exactly the digits of shard 0/1" in merged.stderr
    assert not (tmp_path / "m.csv").exists()  # an interrupted run is never taken for a whole one


def test_the_verdict_table_counts_no_timeout_as_decided():
    """`best`'s table: a digit the program timed out on is a timeout, not 'decided by milp'."""
    verdicts = [milp.Verdict("timeout", "milp", 60.0), milp.Verdict("robust", "milp", 3.0),
                milp.Verdict("robust", "ibp", 0.01), milp.Verdict("undecided", "overflow", 0.01)]
    table = certify.verdict_table(verdicts, "best", Ball("linf", 0.1, PIXEL_RANGE), 4, "pixels", 60.0)
    assert "decided by: ibp 1, milp 1, overflow 1" in table
    assert any(line.split()[:2] == ["timeout", "1"] for line in table.splitlines())
