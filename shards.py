"""A verification run split into shards: the digits a shard takes, the record written beside each per-example CSV,
and the merge of the shards' CSVs into the whole run's table.

Shard K/N takes every N-th digit from K: K, K + N, K + 2N, ... The record (`Record`, a JSON file beside the
CSV, `record_path`) names what the verdicts depend on: the checkpoint's SHA-256, the ball, the method and its
settings, the number of digits of the whole run, the code version, the shard, and the CSV's own SHA-256. The
merge joins shards only where every record agrees but for the shard, and the shards cover every digit once: the
merged table is then, row for row, the unsharded run's (the seconds aside, which are timing).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from checkpoints import atomic_write, csv_bytes, write_json
from errors import Failure


class ShardError(Failure):
    """Shard CSVs that do not make one run: another run's, overlapping, missing, or edited."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: every `count`-th digit of a run, starting at digit `index`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'K/N', as written by `str`."""
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"{text!r} is not a shard K/N")
        return cls(int(index), int(count))

    def positions(self, total: int) -> range:
        """The digits of this shard among `total`: K, K + N, ... below total."""
        return range(self.index, total, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version(folder: Path) -> str:
    """`git describe --always --dirty` of the code's folder where git can tell; with uncommitted changes, or
    without git, the SHA-256 of the folder's .py files (names and contents) is added or stands alone, so that
    two different working trees never share a version."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    files = digest.hexdigest()[:16]
    try:
        described = subprocess.run(["git", "-C", str(folder), "describe", "--always", "--dirty"], capture_output=True,
                                   text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return f"py-sha256:{files}"
    version = described.stdout.strip()
    if described.returncode or not version:
        return f"py-sha256:{files}"
    return f"{version}+py-sha256:{files}" if version.endswith("-dirty") else version


@dataclass(frozen=True)
class Record:
    """What one per-example CSV of lp, exact or best holds: everything its verdicts depend on, its shard, and
    the SHA-256 of the CSV itself (a CSV rewritten since no longer matches)."""

    checkpoint_sha256: str
    radius: float
    norm: str
    domain: str
    method: str
    time_limit: float
    pgd_steps: int
    pgd_restarts: int
    seed: int
    digits: int  # of the whole run, every shard together
    code_version: str
    shard: str = "0/1"
    csv_sha256: str = ""


def record_path(csv_path: Path) -> Path:
    """The record beside a per-example CSV: FILE.csv.json."""
    return csv_path.with_name(csv_path.name + ".json")


def write_with_record(path: Path, rows: list[list[object]], record: Record) -> None:
    """The CSV, then its record (each atomically), the record holding the CSV's SHA-256."""
    content = csv_bytes(rows)
    atomic_write(path, lambda stream: stream.write(content))
    write_json(record_path(path), asdict(replace(record, csv_sha256=hashlib.sha256(content).hexdigest())))


def read_with_record(path: Path) -> tuple[list[list[str]], Record]:
    """A per-example CSV's rows (header first) and its record, refused when either is missing or unreadable,
    or when the CSV is no longer the one its record describes."""
    sidecar = record_path(path)
    try:
        content = path.read_bytes()
        entries = json.loads(sidecar.read_text())
        record = Record(**{f.name: entries[f.name] for f in fields(Record)})
        Shard.parse(record.shard)
    except FileNotFoundError as err:
        raise ShardError(f"cannot merge {path}: {err.filename} does not exist (a per-example CSV of certify.py "
                         "--method lp, exact or best has its record beside it)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ShardError(f"cannot merge {path}: unreadable, or {sidecar} is not its record ({err})") from None
    if hashlib.sha256(content).hexdigest() != record.csv_sha256:
        raise ShardError(f"cannot merge {path}: it is not the file its record {sidecar} describes (edited since)")
    return list(csv.reader(io.StringIO(content.decode()))), record


def merge(paths: list[Path]) -> tuple[list[list[str]], Record]:
    """The whole run's rows (header first, digits in order) and its record, from the CSVs of its shards.

    Refused, with one line naming the files, where two records differ in anything but the shard (another
    checkpoint, ball, method, setting or code version), where the shards overlap or one is missing, where
    they split the run differently, or where a CSV's digits are not its shard's.
    """
    shards = [(path, *read_with_record(path)) for path in paths]
    first_path, first_rows, first = shards[0]
    count = Shard.parse(first.shard).count
    seen: dict[int, Path] = {}
    for path, rows, record in shards:
        for field in fields(Record):
            if field.name not in ("shard", "csv_sha256") and getattr(record, field.name) != getattr(first, field.name):
                raise ShardError(f"{first_path} and {path} are not shards of one run: {field.name} "
                                 f"{getattr(first, field.name)} and {getattr(record, field.name)}")
        shard = Shard.parse(record.shard)
        if shard.count != count:
            raise ShardError(f"{first_path} is shard {first.shard} and {path} shard {record.shard}: the shards of "
                             "one run split it the same way")
        if shard.index in seen:
            raise ShardError(f"{seen[shard.index]} and {path} are both shard {shard}: they overlap")
        seen[shard.index] = path
        if rows[0] != first_rows[0]:
            raise ShardError(f"{first_path} and {path} have different columns")
        if [int(row[0]) for row in rows[1:]] != list(shard.positions(record.digits)):
            raise ShardError(f"{path} does not hold exactly the digits of shard {shard} of {record.digits}")
    missing = [str(Shard(k, count)) for k in range(count) if k not in seen]
    if missing:
        raise ShardError(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing: the merge needs "
                         f"all {count}")
    body = sorted((row for _, rows, _ in shards for row in rows[1:]), key=lambda row: int(row[0]))
    return [first_rows[0], *body], replace(first, shard=str(Shard()), csv_sha256="")
