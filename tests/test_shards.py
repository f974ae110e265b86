"""Shards of a verification run: every digit in exactly one shard, the merge of the shards' per-example CSVs is
the unsharded run's (the seconds aside), and every mismatch is refused in one line with exit status 2."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import certify
from conftest import assert_one_line_failure, run_in_process
from shards import Shard, record_path

RUN = ["--activation", "relu", "--method", "exact", "--limit", "9", "--cert_magnitude", "0.06", "--workers", "1"]


@given(st.integers(0, 200), st.integers(1, 20))
def test_every_digit_is_in_exactly_one_shard(total, count):
    taken = [position for index in range(count) for position in Shard(index, count).positions(total)]
    assert sorted(taken) == list(range(total))
    assert all(Shard.parse(str(Shard(index, count))) == Shard(index, count) for index in range(count))


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1/0", "a/b", "2", "1/2/3", ""])
def test_a_shard_outside_zero_to_n_or_not_k_slash_n_is_refused(text):
    with pytest.raises(ValueError):
        Shard.parse(text)


def run_certify(capsys, *argv: str | Path) -> tuple[int, str, str]:
    return run_in_process(certify.main, list(argv), capsys)


def one_line(status: int, err: str, fragment: str) -> None:
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


def without_seconds(path: Path) -> list[list[str]]:
    rows = list(csv.reader(path.open()))
    column = rows[0].index("seconds")
    return [row[:column] + row[column + 1:] for row in rows]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, original_demo, mnist_root):
    """The original ReLU demo's first 9 digits at L-inf 0.06 (ibp, milp and clean verdicts), whole and in 3 shards."""
    folder = tmp_path_factory.mktemp("shards")
    checkpoint = original_demo / "relu.p"
    common = [checkpoint, "--data-dir", mnist_root, *RUN]
    outputs = {"whole": folder / "whole.csv", **{k: folder / f"shard{k}.csv" for k in range(3)}}
    for name, path in outputs.items():
        argv = [*common, "--per-example", path] + ([] if name == "whole" else ["--shard", f"{name}/3"])
        certify.main([str(word) for word in argv])
    return folder, common, outputs


def test_the_merged_shards_are_the_unsharded_run(sharded, capsys):
    folder, _, outputs = sharded
    capsys.readouterr()
    status, out, err = run_certify(capsys, "--merge", folder / "merged.csv", outputs[2], outputs[0], outputs[1])
    assert status == 0, err
    assert without_seconds(folder / "merged.csv") == without_seconds(outputs["whole"])
    assert {row[3] for row in without_seconds(outputs["whole"])[1:]} >= {"ibp", "milp", "clean"}
    assert [int(row[0]) for row in csv.reader(outputs[1].open()) if row[0] != "index"] == [1, 4, 7]
    merged, whole = (json.loads(record_path(path).read_text()) for path in (folder / "merged.csv", outputs["whole"]))
    assert {**merged, "csv_sha256": ""} == {**whole, "csv_sha256": ""} and whole["shard"] == "0/1"


def edited_record(path: Path, folder: Path, **changes: object) -> Path:
    """A copy of a shard whose record says `changes`: what another checkpoint's or code version's shard records."""
    copy = folder / f"edited-{path.name}"
    copy.write_bytes(path.read_bytes())
    record_path(copy).write_text(json.dumps({**json.loads(record_path(path).read_text()), **changes}))
    return copy


@pytest.mark.parametrize("case, fragment", [
    ("radius", "not shards of one run: radius 0.06 and 0.05"),
    ("method", "not shards of one run: method exact and lp"),
    ("checkpoint", "not shards of one run: checkpoint_sha256"),
    ("code version", "not shards of one run: code_version"),
    ("overlap", "are both shard 1/3: they overlap"),
    ("missing", "shard 2/3 missing: the merge needs all 3"),
    ("split", "is shard 0/3 and"),
    ("edited", "is not the file its record"),
    ("no record", "does not exist"),
])
def test_the_merge_refuses_shards_that_do_not_make_one_run(case, fragment, sharded, capsys, tmp_path):
    folder, common, outputs = sharded
    first, second, third = outputs[0], outputs[1], outputs[2]
    if case in ("radius", "method"):
        second = tmp_path / "other.csv"
        flag = ["--cert_magnitude", "0.05"] if case == "radius" else ["--method", "lp"]
        certify.main([str(word) for word in [*common, *flag, "--shard", "1/3", "--per-example", second]])
    elif case == "checkpoint":
        second = edited_record(second, tmp_path, checkpoint_sha256="0" * 64)
    elif case == "code version":
        second = edited_record(second, tmp_path, code_version="v0.0-other")
    elif case == "overlap":
        third = edited_record(second, tmp_path)
    elif case == "missing":
        third = None
    elif case == "split":
        second = edited_record(second, tmp_path, shard="1/4")
    elif case == "edited":
        second = tmp_path / "edited.csv"
        second.write_text(outputs[1].read_text().replace("robust", "timeout", 1))
        record_path(second).write_text(record_path(outputs[1]).read_text())
    else:
        second = tmp_path / "bare.csv"
        second.write_text(outputs[1].read_text())
    capsys.readouterr()
    inputs = [path for path in (first, second, third) if path is not None]
    status, _, err = run_certify(capsys, "--merge", tmp_path / "merged.csv", *inputs)
    one_line(status, err, fragment)
    assert not (tmp_path / "merged.csv").exists()


@pytest.mark.parametrize("flags, fragment", [
    (["--method", "exact", "--workers", "0"], "argument --workers: 0 must be > 0"),
    (["--method", "exact", "--workers", "-2"], "argument --workers: -2 must be > 0"),
    (["--method", "exact", "--shard", "3/3"], "need 0 <= K < N"),
    (["--method", "exact", "--shard", "x"], "'x' is not a shard K/N"),
    (["--shard", "0/2"], "--shard applies to --method lp, exact and best, not global"),
    (["--merge", "out.csv"], "name the output, then every shard's CSV"),
])
def test_bad_workers_and_shards_are_refused_in_one_line(flags, fragment, run_script, tmp_path):
    checkpoint = [] if "--merge" in flags else [tmp_path / "any.p"]
    assert_one_line_failure(run_script("certify.py", *checkpoint, *flags), fragment)
