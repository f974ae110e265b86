"""End to end on the genuine MNIST: train one epoch, save, reload, certify, as a user would."""

from __future__ import annotations

import json
import re

import pytest
import torch

from models import load_checkpoint

RESULT = re.compile(r"test (acc|certified) on clean examples \(%\): (\d+\.\d{3})$", re.M)


def results(stdout: str) -> dict[str, float]:
    return {kind: float(value) for kind, value in RESULT.findall(stdout)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_root, run_script):
    """One epoch of the default GroupSort net (seed 0), saved to a temporary folder."""
    out = tmp_path_factory.mktemp("outputs")
    run = run_script("train_mnist.py", "--epochs", "1", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_groupsort.p", run.stdout


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
    checkpoint = load_checkpoint(path)
    assert checkpoint.metrics == metrics and not checkpoint.original
    assert checkpoint.model.config.activation == "groupsort"
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_certify_cli_reproduces_the_training_numbers(trained, run_script, mnist_root):
    path, stdout = trained
    run = run_script("certify.py", path, "--data-dir", mnist_root)
    assert run.returncode == 0, run.stderr
    assert results(run.stdout) == results(stdout)


def test_certify_cli_at_a_larger_radius_certifies_no_more(trained, run_script, mnist_root):
    path, stdout = trained
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--cert_magnitude", "0.05")
    smaller = results(run.stdout)
    assert smaller["acc"] == results(stdout)["acc"]
    assert smaller["certified"] >= results(stdout)["certified"]


def test_certify_cli_accepts_the_original_demos_bare_state_dict(trained, run_script, mnist_root, tmp_path):
    path, stdout = trained
    state = load_checkpoint(path).model.state_dict()
    original = {"inlayer.weight": state["layers.0.weight"], "inlayer.bias": state["layers.0.bias"],
                "outlayer.weight": state["layers.2.weight"], "outlayer.bias": state["layers.2.bias"]}
    torch.save(original, tmp_path / "original.p")
    run = run_script("certify.py", tmp_path / "original.p", "--data-dir", mnist_root,
                     "--activation", "groupsort", "--group_size", "10")
    assert run.returncode == 0, run.stderr
    assert results(run.stdout) == results(stdout)
    # the same weights read as a ReLU net are a different function
    relu = run_script("certify.py", tmp_path / "original.p", "--data-dir", mnist_root, "--activation", "relu")
    assert results(relu.stdout) != results(stdout)


def test_certify_cli_refuses_flags_that_contradict_the_checkpoint(trained, run_script, mnist_root):
    path, _ = trained
    run = run_script("certify.py", path, "--data-dir", mnist_root, "--activation", "relu")
    assert run.returncode == 2
    assert run.stdout == "" and run.stderr.count("\n") == 1
    assert "trained with activation groupsort, not relu" in run.stderr


def test_dry_run_trains_a_few_batches_and_writes_nothing(run_script, mnist_root, tmp_path):
    run = run_script("train_mnist.py", "--dry-run", "--data-dir", mnist_root, "--save-dir", tmp_path / "out")
    assert run.returncode == 0, run.stderr
    assert "dry run: nothing saved" in run.stdout and set(results(run.stdout)) == {"acc", "certified"}
    assert not (tmp_path / "out").exists()


def test_missing_data_is_one_line_and_exit_status_2(run_script, tmp_path):
    run = run_script("train_mnist.py", "--dry-run", "--data-dir", tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte.gz" in lines[0]
    assert str(tmp_path / "MNIST" / "raw") in lines[0] and "Traceback" not in run.stderr


def test_group_size_that_does_not_divide_the_width_exits_2(run_script, mnist_root):
    run = run_script("train_mnist.py", "--dry-run", "--data-dir", mnist_root, "--group_size", "3")
    assert run.returncode == 2
    assert run.stderr.strip() == "error: group size 3 does not divide the layer width 500"
