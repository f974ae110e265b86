"""Epoch times of the default training under OpenMP's two wait policies, on a quiet and on a busy machine.

    OMP_NUM_THREADS=2 python scripts/measure_wait_policy.py --data-dir ../shared/mnist --json results/performance/wait_policy.json

The scripts set OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (unless it is set). For each load beside the
run (none; two busy Python loops; another training run of the same policy) and each policy (`POLICIES`: also
PASSIVE with libgomp's GOMP_SPINCOUNT at 300,000, its spin before sleeping when no policy is set),
`train_mnist.py --epochs N` runs twice, and the epoch times it prints are recorded, with the command, threads, machine and date.
The load is stopped after each pair of runs. Run alone on the machine: the load is the only other work wanted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoints  # noqa: E402
import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOADS = {"none": 3, "two busy loops": 2, "another training run": 2}  # the load beside the run: epochs a run
POLICIES = {  # how idle OpenMP threads wait: spin (ACTIVE), sleep at once (PASSIVE), or spin 300,000 times first
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "PASSIVE, GOMP_SPINCOUNT=300000": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"},
}
EPOCH = re.compile(r"^epoch: \d+/\d+, .*time: ([\d.]+)s$", re.M)


def train(data_dir: Path, policy: str, epochs: int, folder: Path, name: str, **popen: object) -> subprocess.Popen:
    """`train_mnist.py --epochs EPOCHS` under `policy`, started (not waited for), its checkpoint in `folder`."""
    env = {**os.environ, **POLICIES[policy]}
    command = [sys.executable, str(REPO / "train_mnist.py"), "--data-dir", str(data_dir), "--epochs", str(epochs),
               "--save-dir", str(folder), "--save-fn", f"{name}.p", "--overwrite"]
    return subprocess.Popen(command, env=env, cwd=REPO, text=True, **popen)


def load(kind: str, policy: str, data_dir: Path, folder: Path) -> list[subprocess.Popen]:
    """The processes that keep the machine busy beside the measured run."""
    if kind == "two busy loops":
        return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    if kind == "another training run":
        return [train(data_dir, policy, 100, folder, "load", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/mnist"))
    parser.add_argument("--json", type=Path, required=True, metavar="FILE")
    args = parser.parse_args()
    cli.check_output_file(args.json, "--json")
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, epochs in LOADS.items():
            for policy in POLICIES:
                busy = load(kind, policy, args.data_dir, Path(folder))
                try:
                    times = []
                    for attempt in range(2):
                        run = train(args.data_dir, policy, epochs, Path(folder), "run", stdout=subprocess.PIPE)
                        output, _ = run.communicate()
                        if run.returncode != 0:
                            raise SystemExit(f"train_mnist.py failed under {policy} beside {kind}")
                        times.append([float(seconds) for seconds in EPOCH.findall(output)])
                finally:
                    for process in busy:
                        process.kill()
                        process.wait()
                runs.append({"load": kind, "policy": policy, "epoch_seconds": times})
                print(f"{kind}, {policy}: {times}", flush=True)
    checkpoints.write_json(args.json, {**cli.provenance("scripts/measure_wait_policy.py"), "runs": runs})


if __name__ == "__main__":
    cli.run(main)
