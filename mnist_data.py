"""MNIST as whole in-memory tensors, read straight from the four IDX files.

Each split is decoded once into one uint8 tensor and scaled to float32 pixels in
[0, 1]; training batches are then drawn by indexing with a shuffled permutation,
so no per-sample Python runs in the hot path. Normalisation belongs to the model
(see `models.MLPConfig`), so every radius is in pixel units.

torchvision is used only to download the files when they are missing.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from errors import Failure

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IMAGE_SIZE = 28
PIXEL_RANGE = (0.0, 1.0)  # every image of a Split lies in this box: the domain of valid inputs
EVAL_BATCH = 10_000  # examples per evaluation batch: the whole test split at once


class DataError(Failure):
    """The MNIST files are missing, unreadable or malformed (a one-line message)."""


@dataclass(frozen=True)
class Split:
    """One split: images (n, 784) float32 pixels in [0, 1], labels (n,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, count: int) -> Split:
        """The first `count` examples."""
        return Split(self.images[:count], self.labels[:count])

    def batches(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) in order, `size` examples at a time (views, no copies)."""
        for start in range(0, len(self), size):
            yield self.images[start : start + size], self.labels[start : start + size]


def raw_folder(root: Path | str) -> Path:
    """Where torchvision keeps the raw files under `root`: root/MNIST/raw."""
    return Path(root) / "MNIST" / "raw"


def find_file(root: Path | str, name: str) -> Path | None:
    """The IDX file `name` under `root`, uncompressed or gzipped, or None.

    A folder where the file should be is an error, not a missing file.
    """
    for folder in (raw_folder(root), Path(root)):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_dir():
                raise DataError(f"{candidate} is a folder, not an MNIST file")
            if candidate.is_file():
                return candidate
    return None


def read_idx(path: Path, magic: int) -> torch.Tensor:
    """Decode one IDX file (gzipped or not) whose header must carry `magic`."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    if not raw:
        raise DataError(f"{path} is empty")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path} is not an MNIST IDX file (wrong magic number)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or padded: header promises {expected} bytes, file has {len(raw)}"
        )
    if ndim == 3 and dims[1:] != [IMAGE_SIZE, IMAGE_SIZE]:
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28")
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    return torch.from_numpy(array.copy())


def load_split(root: Path | str, split: str) -> Split:
    """Read one split ("train" or "test") from the IDX files under `root`."""
    image_name, label_name = FILES[split]
    paths = [find_file(root, name) for name in (image_name, label_name)]
    if None in paths:
        raise DataError(missing_message(root))
    images = read_idx(paths[0], IMAGE_MAGIC)
    labels = read_idx(paths[1], LABEL_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{paths[0].name} holds {len(images)} images but {paths[1].name} holds {len(labels)} labels"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise DataError(f"{paths[1]} holds a label above 9")
    pixels = images.reshape(len(images), -1).to(torch.float32).div_(255.0)
    return Split(pixels, labels.to(torch.int64))


def missing_message(root: Path | str) -> str:
    names = ", ".join(f"{name}.gz" for pair in FILES.values() for name in pair)
    return (
        f"MNIST not found and could not be downloaded: put {names} in {raw_folder(root)} "
        f"(or point --data-dir or $MNIST_ROOT at a folder holding MNIST/raw)"
    )


def download(root: Path | str) -> None:
    """Fetch the four files into root/MNIST/raw with torchvision, quietly; a failed download leaves
    no folder behind that was not there before."""
    from torchvision.datasets import MNIST  # imported here: only a download needs it

    print(f"downloading MNIST into {raw_folder(root)}", flush=True)
    new = next((folder for folder in reversed((raw_folder(root), *raw_folder(root).parents))
                if not folder.exists()), None)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            MNIST(str(root), train=True, download=True)
    except Exception:  # torchvision raises RuntimeError or URLError subclasses
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        raise DataError(missing_message(root)) from None


def load_mnist(
    root: Path | str, splits: tuple[str, ...] = ("train", "test"), allow_download: bool = True
) -> tuple[Split, ...]:
    """The splits asked for, in order; downloads only when a file of those splits is missing."""
    missing = [name for split in splits for name in FILES[split] if find_file(root, name) is None]
    if missing:
        if not allow_download:
            raise DataError(missing_message(root))
        download(root)
    return tuple(load_split(root, split) for split in splits)
