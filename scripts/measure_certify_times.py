"""Wall time of the demo's `certify.py --method all` commands on one checkpoint, and what each printed.

    OMP_NUM_THREADS=2 python scripts/measure_certify_times.py outputs/recipes/mnist_demo.p --data-dir ../shared/mnist --json results/epyc/performance/certify_times_demo.json
    OMP_NUM_THREADS=2 python scripts/measure_certify_times.py ../shared/original-demo/groupsort.p --data-dir ../shared/mnist --json results/epyc/performance/certify_times_original.json -- --activation groupsort --group_size 10

`certify.py CKPT --method all` on all 10,000 test digits without an attack, with APGD (`--attack`) and with
PGD (`--attack pgd`), one after another, each in a process of its own timed from its start to its exit (Python's
start and the data's load included, as a user waits for them). The table each printed (clean, certified, and with
an attack its robust accuracy and the certified digits it broke, per method) is recorded beside the seconds, with
the command, its flags apart from the checkpoint and the data (`flags`), threads, machine and date. Flags after
`--` go to every certify.py command. Run alone on the machine.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import checkpoints  # noqa: E402
import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ATTACKS = {"none": [], "apgd": ["--attack"], "pgd": ["--attack", "pgd"]}
DIGITS = re.compile(r"radius [\d.]+, (\d+) test examples")
ROW = re.compile(r"^(global|pairwise|margin|ibp)\s+([\d.]+)\s+([\d.]+)(?:\s+([\d.]+)\s+(\d+))?\s*$", re.M)


def printed_table(output: str) -> dict[str, dict[str, float]]:
    """certify.py's table of `--method all`: each method's clean and certified accuracy, and with an attack its
    robust accuracy and the certified digits it broke."""
    table = {}
    for method, clean, certified, robust, broken in ROW.findall(output):
        table[method] = {"clean": float(clean), "certified": float(certified),
                         **({"robust": float(robust), "broken": int(broken)} if robust else {})}
    if not table:
        raise SystemExit(f"certify.py printed no table:\n{output}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/mnist"))
    parser.add_argument("--json", type=Path, required=True, metavar="FILE")
    argv = sys.argv[1:]
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    cli.check_output_file(args.json, "--json")
    runs = []
    for attack, flags in ATTACKS.items():
        certify_flags = ["--method", "all", *flags, *extra]
        command = [str(args.checkpoint), "--data-dir", str(args.data_dir), *certify_flags]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / "certify.py"), *command], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"certify.py {' '.join(command)} failed:\n{done.stderr}")
        digits = DIGITS.search(done.stdout)
        if digits is None:
            raise SystemExit(f"certify.py printed no count of test examples:\n{done.stdout}")
        runs.append({"attack": attack, "command": " ".join(["python certify.py", *command]), "flags": certify_flags,
                     "seconds": round(seconds, 1),
                     "digits": int(digits[1]), "table": printed_table(done.stdout)})
        print(f"{attack}: {seconds:.1f} s", flush=True)
    checkpoints.write_json(args.json, {**cli.provenance("scripts/measure_certify_times.py"),
                                       "checkpoint": args.checkpoint.name, "runs": runs})


if __name__ == "__main__":
    cli.run(main)
