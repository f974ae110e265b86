"""The IDX reader on small synthetic files and on the genuine MNIST; a Split's head and batches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from errors import Failure
from mnist_data import EVAL_BATCH, FILES, IMAGE_MAGIC, LABEL_MAGIC, DataError, Split, load_mnist, load_split, read_idx


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder: Path, split: str, n_images: int, n_labels: int, gz: bool, seed: int = 0) -> np.ndarray:
    """Write a synthetic split; returns its images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n_images, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_labels, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in zip(FILES[split], (idx_bytes(IMAGE_MAGIC, images), idx_bytes(LABEL_MAGIC, labels))):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return images


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzipped_and_raw_files_in_torchvision_layout(tmp_path, gz):
    images = write_split(tmp_path / "MNIST" / "raw", "test", 5, 5, gz)
    split = load_split(tmp_path, "test")
    assert split.images.shape == (5, 784) and split.images.dtype == torch.float32
    assert split.labels.dtype == torch.int64 and len(split) == 5
    expected = torch.from_numpy(images.reshape(5, -1).astype(np.float32) / 255)
    assert torch.equal(split.images, expected)


def test_reads_files_placed_directly_in_the_root(tmp_path):
    write_split(tmp_path, "train", 3, 3, gz=True)
    assert len(load_split(tmp_path, "train")) == 3


BAD_FILES = {  # file name, its bytes, the magic number the reader expects, the error it must give
    "wrong magic number": ("labels", idx_bytes(IMAGE_MAGIC, np.zeros((2, 28, 28))), LABEL_MAGIC, "wrong magic number"),
    "truncated": ("images.gz", gzip.compress(idx_bytes(IMAGE_MAGIC, np.zeros((4, 28, 28)))[:-100]), IMAGE_MAGIC,
                  "truncated"),
    "corrupt gzip": ("images.gz", gzip.compress(idx_bytes(IMAGE_MAGIC, np.zeros((4, 28, 28))))[:40], IMAGE_MAGIC,
                     "cannot read"),
    "wrong image size": ("images", idx_bytes(IMAGE_MAGIC, np.zeros((2, 32, 32))), IMAGE_MAGIC,
                         "32x32 images, expected 28x28"),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_file_is_a_clear_error(case, tmp_path):
    name, content, magic, message = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(path, magic)


def test_image_and_label_counts_must_agree(tmp_path):
    write_split(tmp_path, "test", 5, 4, gz=False)
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        load_split(tmp_path, "test")


def test_missing_files_name_all_four_and_the_folder(tmp_path):
    write_split(tmp_path / "MNIST" / "raw", "test", 2, 2, gz=True)  # train is missing
    with pytest.raises(DataError) as error:
        load_mnist(tmp_path, allow_download=False)
    message = str(error.value)
    assert all(f"{name}.gz" in message for pair in FILES.values() for name in pair)
    assert str(tmp_path / "MNIST" / "raw") in message and "\n" not in message
    assert isinstance(error.value, Failure) and error.value.status == 2  # one line from cli.run, exit status 2


def test_only_the_splits_asked_for_are_read(tmp_path):
    write_split(tmp_path, "test", 2, 2, gz=True)
    write_split(tmp_path, "train", 3, 3, gz=True)
    (tmp_path / f"{FILES['train'][0]}.gz").write_bytes(b"broken")
    (test,) = load_mnist(tmp_path, splits=("test",), allow_download=False)
    assert len(test) == 2


def test_the_test_split_needs_no_training_files(tmp_path):
    """certify.py reads the test split only: the two training files may be absent."""
    write_split(tmp_path / "MNIST" / "raw", "test", 2, 2, gz=True)
    (test,) = load_mnist(tmp_path, splits=("test",), allow_download=False)
    assert len(test) == 2
    with pytest.raises(DataError, match="MNIST not found"):
        load_mnist(tmp_path, splits=("train",), allow_download=False)


def test_genuine_mnist_matches_its_known_facts(mnist_root):
    train, test = load_mnist(mnist_root, allow_download=False)
    assert train.images.shape == (60_000, 784) and test.images.shape == (10_000, 784)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    counts = torch.bincount(train.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train.images.min() == 0 and train.images.max() == 1
    assert train.images.double().mean().item() == pytest.approx(0.1307, abs=5e-5)
    assert train.images.double().std().item() == pytest.approx(0.3081, abs=5e-5)


def test_head_and_batches_cover_the_split_in_order():
    split = Split(torch.arange(20.0).reshape(10, 2), torch.arange(10))
    head = split.head(4)
    assert torch.equal(head.labels, torch.arange(4)) and torch.equal(head.images, split.images[:4])
    assert len(split.head(50)) == 10
    batches = list(split.batches(4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), split.images)
    assert torch.equal(torch.cat([y for _, y in batches]), split.labels)
    assert batches[0][0].data_ptr() == split.images.data_ptr()  # views, not copies
    (only,) = split.batches(EVAL_BATCH)
    assert torch.equal(only[1], split.labels)
