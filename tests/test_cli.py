"""cli.py: a project Failure ends a script in one line with its status, any other exception keeps its traceback;
number and width flags; --data-dir's default from $MNIST_ROOT."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import certify
import cli
import train_mnist
from checkpoints import CheckpointError
from conftest import OFFLINE_ENV, REPO
from curves import CurveError
from errors import ConfigError, Failure, OutputError
from mnist_data import DataError
from training import NonFiniteError


def run_main(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """A script whose main runs `body` under cli.run, as the repo's scripts do."""
    script = tmp_path / "script.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport cli\nimport errors\n\n"
                      f"def main():\n    {body}\n\ncli.run(main)\n")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=OFFLINE_ENV,
                          timeout=120)


def test_a_failure_is_one_line_with_its_status_and_a_bug_keeps_its_traceback(tmp_path):
    failure = run_main(tmp_path, "raise errors.ConfigError('no such recipe')")
    assert failure.returncode == 2 and failure.stderr == "error: no such recipe\n" and failure.stdout == ""
    bug = run_main(tmp_path, "raise ValueError('a bug: index out of range')")
    assert bug.returncode == 1
    assert bug.stderr.startswith("Traceback") and bug.stderr.rstrip().endswith("ValueError: a bug: index out of range")
    assert "error: a bug" not in bug.stderr


def test_cli_run_catches_failures_only(capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.run(lambda: (_ for _ in ()).throw(NonFiniteError("loss is not finite")))
    assert exit_status.value.code == 3
    assert capsys.readouterr().err == "error: loss is not finite\n"
    for bug in (ValueError("bad"), OSError("disk"), TypeError("wrong"), KeyError("x")):
        with pytest.raises(type(bug)):
            cli.run(lambda: (_ for _ in ()).throw(bug))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kind", [DataError, CheckpointError, CurveError, ConfigError, OutputError, cli.UsageError,
                                  NonFiniteError])
def test_every_project_error_is_a_failure(kind):
    assert issubclass(kind, Failure)
    assert kind("x").status == (3 if kind is NonFiniteError else 2)


@pytest.mark.parametrize("parse, text, message", [
    (cli.positive_int, "2.5", "'2.5' is not an int"),
    (cli.positive_int, "0", "0 must be > 0"),
    (cli.positive_float, "fast", "'fast' is not a float"),
    (cli.positive_float, "inf", "inf is not finite"),
    (cli.positive_float, "-inf", "-inf is not finite"),
    (cli.nonnegative_float, "Infinity", "Infinity is not finite"),
    (cli.positive_float, "nan", "nan is not finite"),
    (cli.finite_float, "nan", "nan is not finite"),
    (cli.finite_float, "-inf", "-inf is not finite"),
    (cli.nonnegative_float, "-0.1", "-0.1 must be >= 0.0"),
    (cli.widths, "500x2", "'500x2' is not a comma-separated list of widths"),
    (cli.widths, "10,0", "hidden widths must be positive, got '10,0'"),
    (cli.indices, "675,x", "'675,x' is not a comma-separated list of indices"),
    (cli.indices, "675,675", "indices must be distinct and non-negative, got '675,675'"),
    (cli.indices, "-1", "indices must be distinct and non-negative, got '-1'"),
])
def test_number_and_width_flags_refuse_bad_values(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}$"):
        parse(text)


def test_number_and_width_flags_accept_good_values():
    assert cli.positive_int("3") == 3 and cli.positive_float("1e-3") == 1e-3
    assert cli.nonnegative_float("0") == 0.0 and cli.widths("1024,512") == (1024, 512)
    assert cli.finite_float("-0.5") == -0.5 and cli.indices("880,0,675") == (880, 0, 675)


def test_no_cuda_and_device_cuda_contradict_each_other():
    with pytest.raises(cli.UsageError, match="contradict"):
        cli.pick_device("cuda", no_cuda=True)
    assert cli.pick_device("auto", no_cuda=True).type == "cpu"


def test_data_dir_defaults_to_mnist_root_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_ROOT", str(tmp_path))
    assert certify.parse_args(["x.p"]).data_dir == tmp_path
    assert train_mnist.parse_args([])[1].data_dir == tmp_path
    assert train_mnist.parse_args(["--data-dir", "elsewhere"])[1].data_dir == Path("elsewhere")
    monkeypatch.delenv("MNIST_ROOT")
    assert certify.parse_args(["x.p"]).data_dir == Path("data")


def test_the_machine_of_a_record_names_its_processor(monkeypatch, tmp_path):
    """A record names the processor's model (another processor may sum floats in another order): the first
    'model name' of /proc/cpuinfo, or the platform's word where there is none."""
    import os
    import platform

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Processor 9000\n\nprocessor\t: 1\nmodel name\t: Other\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(cpuinfo if str(self) == "/proc/cpuinfo" else self,
                                                                         *a, **k))
    assert cli.machine() == f"{platform.machine()}, Some Processor 9000, {os.cpu_count()} cores"
    assert cli.provenance("x.py", [])["machine"] == cli.machine()
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(OSError("no such file")))
    assert cli.machine().endswith(f", {os.cpu_count()} cores") and cli.machine().count(",") == 2


def test_the_recorded_command_runs_as_written():
    """An argument with a space (measure_recipe.py --variant "--epochs 100") is quoted in the record, so a shell
    reads the command back into the same arguments."""
    argv = ["ckpt.p", "--variant", "--epochs 100", "--json", "a b.json"]
    assert shlex.split(cli.provenance("x.py", argv)["command"]) == ["python", "x.py", *argv]
