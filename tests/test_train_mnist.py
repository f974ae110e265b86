"""train_mnist.py as a user runs it, on the genuine MNIST: it learns and certifies, saves what it says, fails in
one line with nothing written on bad input, resumes an interrupted run exactly, and the same seed gives the same
model."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoints import load_checkpoint
from conftest import FAST, L2_RADIUS, OFFLINE_ENV, REPO, assert_one_line_failure, files_under, results
from mnist_data import FILES
from training import Recipe


def test_one_epoch_learns_and_certifies_less_than_it_classifies(trained):
    _, stdout = trained
    assert re.search(r"^epoch: 1/1, train loss: \d+\.\d{3}, lc: \d+\.\d{3}, .*cert error: \d\.\d{3}, time: ", stdout, re.M)
    numbers = results(stdout)
    assert numbers["acc"] > 85.0  # chance is 10 %
    assert 0.0 <= numbers["certified"] <= numbers["acc"]


def test_checkpoint_and_metrics_are_written_together(trained):
    path, stdout = trained
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["clean_accuracy"] == pytest.approx(results(stdout)["acc"], abs=5e-4)
    assert {name: metrics[name] for name in Recipe().to_dict()} == Recipe(epochs=1).to_dict()  # the whole recipe
    checkpoint = load_checkpoint(path)
    assert checkpoint.metrics == metrics and not checkpoint.original
    assert checkpoint.model.config.activation == "groupsort"
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_l2_training_certifies_and_records_its_norm_and_method(l2_trained, run_script, mnist_root):
    path, stdout = l2_trained
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["norm"] == "l2" and metrics["method"] == "margin" and metrics["cert_magnitude"] == L2_RADIUS
    trained = results(stdout)
    assert trained["certified"] > 5.0  # L2 radius 1.58 after a single epoch
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--norm", "l2", "--cert_magnitude", L2_RADIUS,
                     "--method", "margin")
    assert run.returncode == 0, run.stderr
    assert results(run.stdout) == trained


def test_batch_norm_training_saves_the_folded_network_and_certify_reproduces_its_results(run_script, mnist_root,
                                                                                         tmp_path):
    """The checkpoint holds the plain MLP that batch norm folded into (no batch-norm state), and
    certify.py, reading it as any other, prints the numbers that training printed."""
    run = run_script("train_mnist.py", *FAST, "--epochs", "1", "--batch-norm", "--loss", "ibp", "--lc_penalty", "0",
                     "--method", "ibp", "--data-dir", mnist_root, "--save-dir", tmp_path)
    assert run.returncode == 0, run.stderr
    trained = results(run.stdout)
    assert trained["acc"] > 50.0 and 0.0 < trained["certified"] <= trained["acc"]  # chance is 10 %
    path = tmp_path / "mnist_groupsort.p"
    checkpoint = torch.load(path, weights_only=True)
    assert not any("norm" in name for name in checkpoint["state_dict"]) and json.loads(
        path.with_suffix(".json").read_text())["batch_norm"] is True
    certify = run_script("certify.py", path, "--data-dir", mnist_root, "--method", "ibp")
    assert certify.returncode == 0, certify.stderr
    assert results(certify.stdout) == trained


def test_dry_run_trains_a_few_batches_and_writes_nothing_reading_mnist_root(run_script, mnist_root, tmp_path):
    """No --data-dir: the data comes from $MNIST_ROOT."""
    run = run_script("train_mnist.py", *FAST, "--dry-run", "--save-dir", tmp_path / "out", cwd=tmp_path,
                     env={**OFFLINE_ENV, "MNIST_ROOT": str(mnist_root)})
    assert run.returncode == 0, run.stderr
    assert "dry run: nothing saved" in run.stdout and set(results(run.stdout)) == {"acc", "certified"}
    assert files_under(tmp_path) == []


TRAIN_CASES = {
    "unknown activation": (["--activation", "tanh"], "argument --activation: invalid choice: 'tanh'"),
    "unknown norm": (["--norm", "l3"], "argument --norm: invalid choice: 'l3'"),
    "unknown method": (["--method", "best"], "argument --method: invalid choice: 'best'"),
    # a project Failure: the whole line is "error: " and the message
    "group size not dividing": (["--group_size", "3"], "error: group size 3 does not divide the layer width 500"),
    "zero epochs": (["--epochs", "0"], "argument --epochs: 0 must be > 0"),
    "fractional epochs": (["--epochs", "2.5"], "argument --epochs: '2.5' is not an int"),
    "negative batch size": (["--batch-size", "-5"], "argument --batch-size: -5 must be > 0"),
    "zero learning rate": (["--lr", "0"], "argument --lr: 0 must be > 0.0"),
    "infinite learning rate": (["--lr", "inf"], "argument --lr: inf is not finite"),
    "learning rate not a number": (["--lr", "fast"], "argument --lr: 'fast' is not a float"),
    "zero group size": (["--group_size", "0"], "argument --group_size/--group-size: 0 must be > 0"),
    "zero hidden width": (["--hidden", "0"], "hidden widths must be positive"),
    "hidden not parsing": (["--hidden", "500x2"], "'500x2' is not a comma-separated list of widths"),
    "negative radius": (["--cert_magnitude", "-0.1"], "argument --cert_magnitude/--cert-magnitude: -0.1 must be >= 0.0"),
    "typo in a flag": (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    "dry run resumed": (["--dry-run", "--resume"], "--dry-run saves nothing, so it cannot be resumed"),
    "unknown recipe": (["--recipe", "nowhere"], "no recipe"),
    "resume with nothing to resume": (["--resume"], "nothing to resume"),
    "resume and overwrite": (["--resume", "--overwrite"], "drop one of the two"),
    "empty checkpoint name": (["--save-fn", ""], "--save-fn must be a file name"),
    "checkpoint name with a folder": (["--save-fn", "sub/model.p"], "--save-fn must be a file name"),
    "network too large to allocate": (["--hidden", "100000000"],
                                      "error: a network of widths 784, 100000000, 10 does not fit in this machine's memory"),
    "no-cuda against device cuda": (["--no-cuda", "--device", "cuda"],
                                    "error: --no-cuda and --device cuda contradict each other: give one"),
}


@pytest.mark.parametrize("case", TRAIN_CASES, ids=list(TRAIN_CASES))
def test_train_bad_arguments(case, run_script, mnist_root, tmp_path):
    flags, fragment = TRAIN_CASES[case]
    out = tmp_path / "out"
    run = run_script("train_mnist.py", *flags, "--data-dir", mnist_root, "--save-dir", out, cwd=tmp_path)
    assert_one_line_failure(run, fragment)
    if fragment.startswith("error: "):
        assert run.stderr.strip() == fragment
    assert sorted(tmp_path.iterdir()) == []  # not even an empty folder


RECIPE_FILE_CASES = {
    "unknown entry": ({"epochs": 1, "eps": 0.1}, "holds unknown entries ['eps']"),
    "invalid value": ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    "unknown loss": ({"loss": "xent"}, "unknown loss 'xent'"),
    "wrong type": ({"lr": "0.01"}, "lr must be a number, got '0.01'"),
}
FLAGS_OVER_THE_FILE = {"invalid value": ["--lr", "0.01"], "unknown loss": ["--loss", "ce"]}


@pytest.mark.parametrize("case", RECIPE_FILE_CASES, ids=list(RECIPE_FILE_CASES))
def test_train_bad_recipe_file(case, run_script, mnist_root, tmp_path):
    entries, fragment = RECIPE_FILE_CASES[case]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(entries))
    out = tmp_path / "out"
    run = run_script("train_mnist.py", "--recipe", recipe, "--data-dir", mnist_root, "--save-dir", out)
    assert_one_line_failure(run, fragment)
    assert run.stderr.startswith("error: ") and run.stdout == ""
    assert files_under(out) == []
    if case in FLAGS_OVER_THE_FILE:  # a bad file is refused even where a flag overrides the bad entry
        run = run_script("train_mnist.py", "--recipe", recipe, *FLAGS_OVER_THE_FILE[case], "--data-dir", mnist_root,
                         "--save-dir", out)
        assert_one_line_failure(run, f"recipe {recipe}: {fragment}")


def test_a_learning_rate_far_out_of_range_and_a_run_ending_near_chance_are_warned_of(run_script, mnist_root,
                                                                                      tmp_path):
    """--lr 1e6 is warned of before training; a run that ends near chance (an lr too small to move the
    weights in one epoch) says so at the end, naming --lr; a sane run warns of nothing."""
    wild = run_script("train_mnist.py", *FAST, "--lr", "1e6", "--dry-run", "--data-dir", mnist_root,
                      "--save-dir", tmp_path / "wild")
    assert wild.returncode == 0 and "warning: --lr 1e+06 is far outside Adam's useful range" in wild.stderr
    stuck = run_script("train_mnist.py", *FAST, "--epochs", "1", "--lr", "1e-6", "--data-dir", mnist_root,
                       "--save-dir", tmp_path / "stuck")
    assert stuck.returncode == 0, stuck.stderr
    assert "is near chance" in stuck.stderr and "check --lr (1e-06)" in stuck.stderr
    sane = run_script("train_mnist.py", *FAST, "--epochs", "1", "--data-dir", mnist_root, "--save-dir", tmp_path / "sane")
    assert sane.returncode == 0 and "warning" not in sane.stderr
    short = run_script("train_mnist.py", *FAST, "--epochs", "1", "--loss", "ibp", "--ramp-epochs", "3", "--data-dir",
                       mnist_root, "--save-dir", tmp_path / "short")
    assert short.returncode == 0 and "ramps up until epoch 3, after --epochs 1" in short.stderr


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory, mnist_root) -> dict[str, Path]:
    """Copies of the real MNIST, each with one file damaged in one way."""
    raw = mnist_root / "MNIST" / "raw"
    train_images = f"{FILES['train'][0]}.gz"
    original = gzip.decompress((raw / train_images).read_bytes())
    damages = {
        "truncated": gzip.compress(compresslevel=1, data=original[:-1000]),
        "corrupt gzip": (raw / train_images).read_bytes()[:5000],
        "wrong magic": gzip.compress(compresslevel=1, data=b"\x00\x00\x08\x01" + original[4:]),
        "wrong count": gzip.compress(compresslevel=1, data=original[:4] + (59_999).to_bytes(4, "big") + original[8:-784]),
    }
    roots = {}
    for name, content in damages.items():
        root = tmp_path_factory.mktemp(name.replace(" ", "_"))
        shutil.copytree(raw, root / "MNIST" / "raw")
        (root / "MNIST" / "raw" / train_images).write_bytes(content)
        roots[name] = root
    return roots


@pytest.mark.parametrize("damage", ["truncated", "corrupt gzip", "wrong magic", "wrong count"])
def test_train_damaged_data(damage, broken_data, run_script, tmp_path):
    fragments = {"truncated": "truncated", "corrupt gzip": "cannot read", "wrong magic": "wrong magic number",
                 "wrong count": "holds 59999 images but train-labels-idx1-ubyte.gz holds 60000 labels"}
    out = tmp_path / "out"
    run = run_script("train_mnist.py", "--data-dir", broken_data[damage], "--save-dir", out)
    assert_one_line_failure(run, fragments[damage])
    assert files_under(out) == []


def test_train_missing_data_names_the_four_files_and_the_folder(run_script, tmp_path):
    nowhere = tmp_path / "nowhere"
    run = run_script("train_mnist.py", "--data-dir", nowhere, "--save-dir", tmp_path / "out")
    assert_one_line_failure(run, "t10k-labels-idx1-ubyte.gz")
    assert all(f"{name}.gz" in run.stderr for pair in FILES.values() for name in pair)
    assert str(nowhere / "MNIST" / "raw") in run.stderr and "$MNIST_ROOT" in run.stderr
    assert sorted(tmp_path.iterdir()) == []  # the failed download left no folder behind


def test_a_data_file_replaced_by_a_folder_or_emptied_is_named(run_script, mnist_root, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw)
    labels = raw / f"{FILES['test'][1]}.gz"
    labels.unlink()
    labels.mkdir()
    run = run_script("train_mnist.py", *FAST, "--data-dir", tmp_path, "--save-dir", tmp_path / "out")
    assert_one_line_failure(run, f"{labels} is a folder, not an MNIST file")
    labels.rmdir()
    labels.write_bytes(b"")
    run = run_script("train_mnist.py", *FAST, "--data-dir", tmp_path, "--save-dir", tmp_path / "out")
    assert_one_line_failure(run, f"{labels} is empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["under a file", "a file"])
def test_train_output_folder_that_cannot_be_written(where, run_script, mnist_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    save_dir = blocker / "out" if where == "under a file" else blocker
    run = run_script("train_mnist.py", *FAST, "--data-dir", mnist_root, "--save-dir", save_dir)
    assert_one_line_failure(run, f"{save_dir / 'mnist_groupsort.p'} cannot be written: {blocker} is a file")
    assert files_under(tmp_path) == [blocker]


def test_a_saved_training_state_is_never_replaced_without_saying_so(small_checkpoint, run_script, mnist_root,
                                                                    tmp_path):
    for name in ("mnist_groupsort.p", "mnist_groupsort.last.p"):
        shutil.copy(small_checkpoint.with_name(name), tmp_path / name)
    before = {path: path.read_bytes() for path in files_under(tmp_path)}
    again = run_script("train_mnist.py", *FAST, "--epochs", "1", "--seed", "1", "--data-dir", mnist_root,
                       "--save-dir", tmp_path)
    assert_one_line_failure(again, "holds the training state of an earlier run: continue it with --resume")
    assert {path: path.read_bytes() for path in files_under(tmp_path)} == before
    fresh = run_script("train_mnist.py", *FAST, "--epochs", "1", "--seed", "1", "--data-dir", mnist_root,
                       "--save-dir", tmp_path, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "mnist_groupsort.p").read_bytes() != before[tmp_path / "mnist_groupsort.p"]


def test_same_seed_gives_identical_weights_and_metrics(small_checkpoint, run_script, mnist_root, tmp_path):
    again = run_script("train_mnist.py", *FAST, "--epochs", "1", "--data-dir", mnist_root, "--save-dir", tmp_path)
    other = run_script("train_mnist.py", *FAST, "--epochs", "1", "--seed", "1", "--data-dir", mnist_root,
                       "--save-dir", tmp_path / "seed1")
    assert again.returncode == 0 and other.returncode == 0
    first, second, third = (torch.load(p, weights_only=True) for p in
                            (small_checkpoint, tmp_path / "mnist_groupsort.p", tmp_path / "seed1" / "mnist_groupsort.p"))
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key])
    assert not torch.equal(first["state_dict"]["layers.0.weight"], third["state_dict"]["layers.0.weight"])
    timing = {"seconds_per_epoch_median", "train_seconds", "peak_rss_mb"}
    assert {k: v for k, v in first["metrics"].items() if k not in timing} == \
           {k: v for k, v in second["metrics"].items() if k not in timing}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_root, run_script) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    run = run_script("train_mnist.py", *FAST, "--epochs", "4", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return torch.load(out / "mnist_groupsort.p", weights_only=True)["state_dict"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill"])
def test_killed_run_resumes_to_the_uninterrupted_weights(sig, uninterrupted, mnist_root, run_script, tmp_path):
    args = [sys.executable, str(REPO / "train_mnist.py"), *FAST, "--epochs", "4",
            "--data-dir", str(mnist_root), "--save-dir", str(tmp_path)]
    # SIGINT as a terminal's Ctrl-C finds it: a runner may start the suite with SIGINT ignored (a background job,
    # a pytest-xdist worker), and a child would inherit that and never see the signal.
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=OFFLINE_ENV,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = tmp_path / "mnist_groupsort.last.p"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    statuses = {signal.SIGINT: 130, signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGKILL: -signal.SIGKILL}
    assert process.returncode == statuses[sig], ("the run finished before it could be interrupted", stderr)
    if sig != signal.SIGKILL:  # a scheduler's SIGTERM is reported like Ctrl-C
        assert "interrupted: epoch" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "mnist_groupsort.p").exists()

    resumed = run_script("train_mnist.py", *FAST, "--epochs", "4", "--data-dir", mnist_root,
                         "--save-dir", tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("resuming ")
    final = torch.load(tmp_path / "mnist_groupsort.p", weights_only=True)["state_dict"]
    for key, value in uninterrupted.items():
        assert torch.equal(value, final[key]), key


def test_resume_refuses_a_different_recipe(small_checkpoint, run_script, mnist_root):
    state = small_checkpoint.with_suffix(".last.p")
    before = state.read_bytes()
    run = run_script("train_mnist.py", *FAST, "--epochs", "2", "--lr", "0.01", "--data-dir", mnist_root,
                     "--save-dir", small_checkpoint.parent, "--resume")
    assert_one_line_failure(run, "it was trained with lr 0.001 (now 0.01)")
    assert state.read_bytes() == before


def test_resume_may_add_epochs_and_change_the_reported_method(small_checkpoint, run_script, mnist_root, tmp_path):
    shutil.copy(small_checkpoint.with_suffix(".last.p"), tmp_path / "mnist_groupsort.last.p")
    run = run_script("train_mnist.py", *FAST, "--epochs", "2", "--method", "pairwise", "--data-dir", mnist_root,
                     "--save-dir", tmp_path, "--resume")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("resuming ") and "epoch: 2/2" in run.stdout and "epoch: 1/2" not in run.stdout
    metrics = json.loads((tmp_path / "mnist_groupsort.json").read_text())
    assert metrics["epochs"] == 2 and metrics["method"] == "pairwise"


def test_a_truncated_training_state_is_named_and_kept(small_checkpoint, run_script, mnist_root, tmp_path):
    state_path = tmp_path / "mnist_groupsort.last.p"
    state_path.write_bytes(small_checkpoint.with_suffix(".last.p").read_bytes()[:5000])
    run = run_script("train_mnist.py", *FAST, "--epochs", "2", "--data-dir", mnist_root,
                     "--save-dir", tmp_path, "--resume")
    assert_one_line_failure(run, f"{state_path} is not a readable PyTorch checkpoint: truncated, damaged")
    assert files_under(tmp_path) == [state_path] and len(state_path.read_bytes()) == 5000


def test_non_finite_loss_stops_with_status_3_and_keeps_the_last_good_state(small_checkpoint, run_script,
                                                                           mnist_root, tmp_path):
    shutil.copy(small_checkpoint.with_suffix(".last.p"), tmp_path / "mnist_groupsort.last.p")
    state_path = tmp_path / "mnist_groupsort.last.p"
    state = torch.load(state_path, weights_only=True)
    state["model"]["layers.0.weight"][0, 0] = float("nan")
    torch.save(state, state_path)
    good = state_path.read_bytes()
    run = run_script("train_mnist.py", *FAST, "--epochs", "2", "--data-dir", mnist_root,
                     "--save-dir", tmp_path, "--resume")
    assert_one_line_failure(run, "not finite in epoch 2", status=3)
    assert "the last good state is in" in run.stderr
    assert state_path.read_bytes() == good and not (tmp_path / "mnist_groupsort.p").exists()
