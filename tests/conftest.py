"""Shared constants, fixtures and helpers. The real MNIST is required: its absence fails the suite, never skips it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# One torch thread per test process (and per script a test runs), unless OMP_NUM_THREADS says otherwise: the
# suite's small operations run several times faster than with threads that wake for each of them, and the
# figures it checks do not depend on the machine's core count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = Path(os.environ.get("MNIST_ROOT", REPO.parent / "shared" / "mnist"))
# The original demo's own checkpoints (bare state_dicts), with the figures its README beside them gives.
ORIGINAL_DEMO = REPO.parent / "shared" / "original-demo"
# Any download attempt made by a test process fails at once, online or not.
OFFLINE_ENV = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}

REL = 1e-9  # float64 slack for rounding only, in every bound and soundness check
FAST = ("--hidden", "100")  # a small net for script runs: epochs of a fraction of a second
L2_RADIUS = 1.58  # the L2 radius of the L2-trained net (as in recipes/l2.json)
RESULT = re.compile(r"test (acc|certified) on clean examples \(%\): (\d+\.\d{3})$", re.M)


def results(stdout: str) -> dict[str, float]:
    """The two result lines that train_mnist.py and certify.py print: {"acc": ..., "certified": ...}."""
    return {kind: float(value) for kind, value in RESULT.findall(stdout)}


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def assert_one_line_failure(run: subprocess.CompletedProcess[str], fragment: str, status: int = 2) -> None:
    """The script failed with `status`, one line on stderr holding `fragment`, and no traceback."""
    assert run.returncode == status, (run.returncode, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert fragment in lines[0] and "Traceback" not in run.stderr


def run_in_process(main, argv: list, capsys) -> tuple[int, str, str]:
    """A script's main in this process, as its command line runs it (`cli.run`): (exit status, stdout, stderr)."""
    import cli

    status = 0
    try:
        cli.run(lambda: main([str(word) for word in argv]))
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The genuine MNIST files (torchvision root layout); fails when they are missing."""
    raw = MNIST_ROOT / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST not found under {raw}: set MNIST_ROOT or put ../shared/mnist beside the repo")
    return MNIST_ROOT


@pytest.fixture(scope="session")
def original_demo() -> Path:
    """The folder of the original demo's checkpoints groupsort.p and relu.p; fails when they are missing."""
    if not (ORIGINAL_DEMO / "groupsort.p").is_file() or not (ORIGINAL_DEMO / "relu.p").is_file():
        pytest.fail(f"the original demo's checkpoints are not in {ORIGINAL_DEMO}: put ../shared beside the repo")
    return ORIGINAL_DEMO


@pytest.fixture(scope="session")
def run_script():
    """Run one of the repo's scripts as a user would, offline, capturing its output."""

    def run(script: str, *args: str | Path, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / script), *map(str, args)],
            capture_output=True, text=True, env=env or OFFLINE_ENV, timeout=600, cwd=cwd,
        )

    return run


# Trained checkpoints shared by the script tests (test_train_mnist.py, test_certify.py) and test_models.py:
# each is trained once per session.

@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_root, run_script) -> tuple[Path, str]:
    """One epoch of the default GroupSort net (seed 0): its checkpoint and train_mnist.py's stdout."""
    out = tmp_path_factory.mktemp("outputs")
    run = run_script("train_mnist.py", "--epochs", "1", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_groupsort.p", run.stdout


@pytest.fixture(scope="session")
def l2_trained(tmp_path_factory, mnist_root, run_script) -> tuple[Path, str]:
    """One epoch of GroupSort with the L2 penalty (seed 0), reported with the margin rule at L2_RADIUS."""
    out = tmp_path_factory.mktemp("l2")
    run = run_script("train_mnist.py", "--epochs", "1", "--norm", "l2", "--lc_penalty", "0.5",
                     "--cert_magnitude", str(L2_RADIUS), "--method", "margin", "--data-dir", mnist_root,
                     "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_groupsort.p", run.stdout


@pytest.fixture(scope="session")
def cnn_trained(tmp_path_factory, mnist_root, run_script) -> tuple[Path, str]:
    """One epoch of a small IBP-trained ReLU CNN (seed 0), reported with IBP: its checkpoint and stdout."""
    out = tmp_path_factory.mktemp("cnn")
    run = run_script("train_mnist.py", "--convs", "4:4:2:1,8:4:2:1", "--hidden", "20", "--activation", "relu",
                     "--loss", "ibp", "--epochs", "1", "--method", "ibp", "--data-dir", mnist_root,
                     "--save-dir", out, "--save-fn", "cnn.p")
    assert run.returncode == 0, run.stderr
    return out / "cnn.p", run.stdout


@pytest.fixture(scope="session")
def relu_checkpoint(tmp_path_factory, mnist_root, run_script) -> Path:
    """One epoch of a FAST ReLU net (seed 0)."""
    out = tmp_path_factory.mktemp("relu")
    run = run_script("train_mnist.py", *FAST, "--activation", "relu", "--epochs", "1", "--data-dir", mnist_root,
                     "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_relu.p"


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, mnist_root, run_script) -> Path:
    """One epoch of a FAST net (seed 0), with its training state beside it."""
    out = tmp_path_factory.mktemp("small")
    run = run_script("train_mnist.py", *FAST, "--epochs", "1", "--data-dir", mnist_root, "--save-dir", out)
    assert run.returncode == 0, run.stderr
    return out / "mnist_groupsort.p"
