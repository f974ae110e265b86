"""Bad input fails in one line with nothing written; interrupted runs resume exactly; same seed, same model."""

from __future__ import annotations

import gzip
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import OFFLINE_ENV, REPO
from mnist_data import FILES

FAST = ("--hidden", "100")  # a small net: epochs of a fraction of a second


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line_failure(run: subprocess.CompletedProcess[str], fragment: str, status: int = 2) -> None:
    assert run.returncode == status, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert fragment in lines[0] and "Traceback" not in run.stderr


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


TRAIN_CASES = {
    "unknown activation": (["--activation", "tanh"], "argument --activation: invalid choice: 'tanh'"),
    "unknown norm": (["--norm", "l3"], "argument --norm: invalid choice: 'l3'"),
    "unknown method": (["--method", "best"], "argument --method: invalid choice: 'best'"),
    "group size not dividing": (["--group_size", "3"], "group size 3 does not divide the layer width 500"),
    "zero epochs": (["--epochs", "0"], "argument --epochs: 0 must be > 0"),
    "negative batch size": (["--batch-size", "-5"], "argument --batch-size: -5 must be > 0"),
    "zero learning rate": (["--lr", "0"], "argument --lr: 0 must be > 0.0"),
    "learning rate not a number": (["--lr", "fast"], "argument --lr: 'fast' is not a float"),
    "zero group size": (["--group_size", "0"], "argument --group_size/--group-size: 0 must be > 0"),
    "zero hidden width": (["--hidden", "0"], "hidden widths must be positive"),
    "hidden not parsing": (["--hidden", "500x2"], "'500x2' is not a comma-separated list of widths"),
    "negative radius": (["--cert_magnitude", "-0.1"], "argument --cert_magnitude/--cert-magnitude: -0.1 must be >= 0.0"),
    "typo in a flag": (["--epoch", "3"], "unrecognized arguments: --epoch 3"),
    "resume with nothing to resume": (["--resume"], "nothing to resume"),
}


@pytest.mark.parametrize("case", TRAIN_CASES, ids=list(TRAIN_CASES))
def test_train_bad_arguments(case, run_script, mnist_root, tmp_path):
    flags, fragment = TRAIN_CASES[case]
    out = tmp_path / "out"
    run = run_script("train_mnist.py", *flags, "--data-dir", mnist_root, "--save-dir", out)
    assert_one_line_failure(run, fragment)
    assert files_under(out) == []


@pytest.mark.parametrize("damage", ["truncated", "corrupt gzip", "wrong magic", "wrong count"])
def test_train_damaged_data(damage, broken_data, run_script, tmp_path):
    fragments = {"truncated": "truncated", "corrupt gzip": "cannot read", "wrong magic": "wrong magic number",
                 "wrong count": "holds 59999 images but train-labels-idx1-ubyte.gz holds 60000 labels"}
    out = tmp_path / "out"
    run = run_script("train_mnist.py", "--data-dir", broken_data[damage], "--save-dir", out)
    assert_one_line_failure(run, fragments[damage])
    assert files_under(out) == []


def test_train_missing_data_names_the_files(run_script, tmp_path):
    run = run_script("train_mnist.py", "--data-dir", tmp_path / "nowhere", "--save-dir", tmp_path / "out")
    assert_one_line_failure(run, "t10k-labels-idx1-ubyte.gz")
    assert files_under(tmp_path / "out") == []


def test_train_output_folder_that_cannot_be_written(run_script, mnist_root, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = run_script("train_mnist.py", *FAST, "--data-dir", mnist_root, "--save-dir", blocker / "out")
    assert_one_line_failure(run, f"cannot write to {blocker / 'out'}")
    assert files_under(tmp_path) == [blocker]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, mnist_root, run_script) -> Path:
    out = tmp_path_factory.mktemp("small")
    run = run_script("train_mnist.py", *FAST, "--epochs", "1", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_groupsort.p"


def not_a_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "notes.p"
    path.write_text("just text")
    return path


def truncated_checkpoint(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "cut.p"
    path.write_bytes(source.read_bytes()[:2000])
    return path


def foreign_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.p"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    return path


CERTIFY_CASES = {
    "missing checkpoint": (lambda tmp, ckpt: tmp / "absent.p", [], "does not exist"),
    "folder as checkpoint": (lambda tmp, ckpt: tmp, [], "is a folder"),
    "text file": (lambda tmp, ckpt: not_a_checkpoint(tmp), [], "not a readable PyTorch checkpoint"),
    "truncated checkpoint": (truncated_checkpoint, [], "not a readable PyTorch checkpoint"),
    "another model's state_dict": (lambda tmp, ckpt: foreign_checkpoint(tmp), [],
                                   "not a checkpoint of this project or of the original demo"),
    "wrong hidden width": (lambda tmp, ckpt: ckpt, ["--hidden", "500"], "trained with hidden (100,), not (500,)"),
    "wrong activation": (lambda tmp, ckpt: ckpt, ["--activation", "relu"], "trained with activation groupsort"),
    "wrong group size": (lambda tmp, ckpt: ckpt, ["--group_size", "5"], "trained with group_size 10, not 5"),
    "negative radius": (lambda tmp, ckpt: ckpt, ["--cert_magnitude", "-1"], "must be >= 0.0"),
    "wrong normalisation": (lambda tmp, ckpt: ckpt, ["--std", "0.3081"],
                            "trained with normalisation (0.1307, 1.0), not (0.1307, 0.3081)"),
    "unknown method": (lambda tmp, ckpt: ckpt, ["--method", "best"], "argument --method: invalid choice: 'best'"),
    "unknown norm": (lambda tmp, ckpt: ckpt, ["--norm", "l7"], "argument --norm: invalid choice: 'l7'"),
}


@pytest.mark.parametrize("case", CERTIFY_CASES, ids=list(CERTIFY_CASES))
def test_certify_bad_input(case, small_checkpoint, run_script, mnist_root, tmp_path):
    make_path, flags, fragment = CERTIFY_CASES[case]
    run = run_script("certify.py", make_path(tmp_path, small_checkpoint), *flags, "--data-dir", mnist_root)
    assert_one_line_failure(run, fragment)
    assert run.stdout == ""


def test_certify_original_state_dict_with_the_wrong_width(small_checkpoint, run_script, mnist_root, tmp_path):
    state = torch.load(small_checkpoint, weights_only=True)["state_dict"]
    names = {"layers.0": "inlayer", "layers.2": "outlayer"}
    original = {f"{names[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in state.items()}
    torch.save(original, tmp_path / "original.p")
    run = run_script("certify.py", tmp_path / "original.p", "--hidden", "500", "--data-dir", mnist_root)
    assert_one_line_failure(run, "has hidden width 100, not (500,)")


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
    timing = {"seconds_per_epoch_median", "train_seconds"}
    assert {k: v for k, v in first["metrics"].items() if k not in timing} == \
           {k: v for k, v in second["metrics"].items() if k not in timing}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_root, run_script) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("uninterrupted")
    run = run_script("train_mnist.py", *FAST, "--epochs", "4", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return torch.load(out / "mnist_groupsort.p", weights_only=True)["state_dict"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_killed_run_resumes_to_the_uninterrupted_weights(sig, uninterrupted, mnist_root, run_script, tmp_path):
    args = [sys.executable, str(REPO / "train_mnist.py"), *FAST, "--epochs", "4",
            "--data-dir", str(mnist_root), "--save-dir", str(tmp_path)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=OFFLINE_ENV)
    state = tmp_path / "mnist_groupsort.last.p"
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (130, -signal.SIGKILL), "the run finished before it could be interrupted"
    if sig == signal.SIGINT:
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
    run = run_script("train_mnist.py", *FAST, "--epochs", "2", "--lr", "0.01", "--data-dir", mnist_root,
                     "--save-dir", small_checkpoint.parent, "--resume")
    assert_one_line_failure(run, "it was trained with lr 0.001 (now 0.01)")


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
