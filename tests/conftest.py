"""Shared fixtures. The real MNIST is required: its absence fails the suite, never skips it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_ROOT = Path(os.environ.get("MNIST_ROOT", REPO.parent / "shared" / "mnist"))
# Any download attempt made by a test process fails at once, online or not.
OFFLINE_ENV = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The genuine MNIST files (torchvision root layout); fails when they are missing."""
    raw = MNIST_ROOT / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST not found under {raw}: set MNIST_ROOT or put ../shared/mnist beside the repo")
    return MNIST_ROOT


@pytest.fixture(scope="session")
def run_script():
    """Run one of the repo's scripts as a user would, offline, capturing its output."""

    def run(script: str, *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / script), *map(str, args)],
            capture_output=True, text=True, env=OFFLINE_ENV, timeout=600, cwd=cwd,
        )

    return run
