"""Tests for the golden model's data layer (golden/data.py) and the embedded subset."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from golden.data import (
    DATASETS,
    EMBEDDED_DIR,
    FASHION_MNIST_DIR,
    IDX_FILES,
    DataError,
    Dataset,
    load_dataset,
    read_idx,
    write_idx,
)

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def _write_split_dir(
    d: Path,
    n_train: int = 20,
    n_test: int = 10,
    hw: tuple[int, int] = (28, 28),
    gz: bool = False,
    n_train_labels: int | None = None,
    bad_label: int | None = None,
) -> Path:
    """A tiny synthetic MNIST-format directory."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    train_y = (np.arange(n_train if n_train_labels is None else n_train_labels) % 10).astype(np.uint8)
    if bad_label is not None:
        train_y[3] = bad_label
    arrays = (
        rng.integers(0, 256, (n_train, *hw), dtype=np.uint8),
        train_y,
        rng.integers(0, 256, (n_test, *hw), dtype=np.uint8),
        (np.arange(n_test) % 10).astype(np.uint8),
    )
    for name, arr in zip(IDX_FILES, arrays):
        write_idx(d / (name + sfx), arr)
    return d


# --- IDX round trips ---------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_idx_round_trip(tmp_path: Path, dtype: str, suffix: str) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    p = tmp_path / f"x.idx{suffix}"
    write_idx(p, arr)
    back = read_idx(p)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    back[0, 0, 0] = 0  # an ordinary, writable array
    assert (p.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4), (1, 2, 3, 4)])
def test_idx_round_trip_ndims(tmp_path: Path, shape: tuple[int, ...]) -> None:
    arr = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    write_idx(tmp_path / "a", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a", ndim=len(shape), dtype="uint8"), arr)


def test_gzip_output_is_reproducible_and_detected_by_magic(tmp_path: Path) -> None:
    arr = np.arange(600, dtype=np.uint8).reshape(6, 10, 10)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b.gz", arr)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    # gzip content under a plain name is still recognised by its magic bytes
    (tmp_path / "c").write_bytes((tmp_path / "a.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "c"), arr)


def test_idx_known_bytes(tmp_path: Path) -> None:
    p = tmp_path / "lbl"
    p.write_bytes(_header(0x0B, (3,)) + bytes([0x01, 0x02, 0xFF, 0xFE, 0x00, 0x07]))
    np.testing.assert_array_equal(read_idx(p), np.array([0x0102, -2, 7], dtype=np.int16))


# --- corrupt inputs ------------------------------------------------------------


def test_bad_magic(tmp_path: Path) -> None:
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x00\x00" + bytes(100))
    with pytest.raises(DataError, match=r"bad IDX magic 0x00000000 \(expected 0x0000TTNN"):
        read_idx(p)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad IDX magic 0x00000000 "
                       r"\(expected 0x00000803 for a uint8 3-D tensor\)"):
        read_idx(p, ndim=3, dtype="uint8")
    p.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad IDX magic 0x12340803 "
                       r"\(expected 0x00000803 for a uint8 3-D tensor\)"):
        read_idx(p, ndim=3, dtype="uint8")


def test_wrong_type_code(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(_header(0x07, (2,)) + b"\x00\x00")
    with pytest.raises(DataError, match=r"unsupported IDX type code 0x07.*supported: 0x08 uint8"):
        read_idx(p)
    write_idx(p, np.zeros(2, np.float32))
    with pytest.raises(DataError, match=r"type code 0x0D \(float32\).*expected 0x08 \(uint8\)"):
        read_idx(p, dtype="uint8")


def test_wrong_ndim(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(_header(0x08, (1, 1, 1, 1, 1)) + b"\x00")
    with pytest.raises(DataError, match=r"declares 5 dimensions \(expected 1\.\.4\)"):
        read_idx(p)
    write_idx(p, np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"declares a 1-D tensor, expected 3-D"):
        read_idx(p, ndim=3)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path: Path, gz: bool) -> None:
    blob = _header(0x08, (2, 3, 3)) + bytes(17)
    p = tmp_path / ("x.gz" if gz else "x")
    p.write_bytes(gzip.compress(blob) if gz else blob)
    with pytest.raises(DataError, match=r"truncated payload: 2x3x3 uint8 needs 18 bytes.*found 17"):
        read_idx(p)


def test_trailing_bytes(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(_header(0x0C, (2,)) + bytes(9))
    with pytest.raises(DataError, match=r"trailing bytes after payload: 2 int32 needs 8 bytes.*found 9"):
        read_idx(p)


def test_truncated_header(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(_header(0x08, (2, 3, 3))[:10])
    with pytest.raises(DataError, match=r"truncated IDX header: a 3-D tensor needs 16 header bytes, file has 10"):
        read_idx(p)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=r"2 bytes, too short"):
        read_idx(p)


def test_truncated_gzip(tmp_path: Path) -> None:
    src = tmp_path / "full.gz"
    write_idx(src, np.arange(1000, dtype=np.int32))
    p = tmp_path / "cut.gz"
    p.write_bytes(src.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip stream"):
        read_idx(p)
    p.write_bytes(b"\x1f\x8b" + bytes(30))  # gzip magic, garbage after
    with pytest.raises(DataError, match=r"corrupt or truncated gzip stream"):
        read_idx(p)


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty: empty file \(0 bytes\)"):
        read_idx(p)
    with pytest.raises(DataError, match=r"nope: cannot read file"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match=r"cannot read file"):
        read_idx(tmp_path)  # a directory


def test_plain_file_named_gz_is_noted(tmp_path: Path) -> None:
    p = tmp_path / "x.gz"
    p.write_bytes(b"PK\x03\x04" + bytes(10))
    with pytest.raises(DataError, match=r"bad IDX magic.*not gzip-compressed"):
        read_idx(p)


def test_write_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot write dtype uint16"):
        write_idx(tmp_path / "x", np.zeros(2, np.uint16))
    with pytest.raises(DataError, match=r"cannot write a 5-D array"):
        write_idx(tmp_path / "x", np.zeros((1,) * 5, np.uint8))
    with pytest.raises(DataError, match=r"cannot write file"):
        write_idx(tmp_path / "missing-dir" / "x", np.zeros(2, np.uint8))


# --- directories and datasets -------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_dir(tmp_path: Path, gz: bool) -> None:
    d = _write_split_dir(tmp_path / "m", gz=gz)
    ds = load_dataset("mnist", data_dir=d)
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.test_images.shape == (10, 1, 28, 28)
    assert ds.train_labels.dtype == np.uint8 and ds.source == str(d)
    assert repr(ds) == f"Dataset('mnist', train=20, test=10, 1x28x28, from {str(d)!r})"
    np.testing.assert_array_equal(read_idx(next(d.glob("train-images*")))[:, None], ds.train_images)


def test_dotted_spelling_and_other_sizes(tmp_path: Path) -> None:
    d = _write_split_dir(tmp_path / "m", hw=(8, 9))
    for f in list(d.iterdir()):
        f.rename(d / f.name.replace("-idx", ".idx"))
    ds = load_dataset("mnist", data_dir=d)
    assert ds.image_shape == (1, 8, 9)


def test_no_idx_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.bin").write_bytes(b"y")
    with pytest.raises(DataError, match=re.escape(
        f"no MNIST-format files in {tmp_path}: expected train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz]; found: a.txt, b.bin")):
        load_dataset("mnist", data_dir=tmp_path)


def test_one_file_missing(tmp_path: Path) -> None:
    d = _write_split_dir(tmp_path / "m", gz=True)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", data_dir=d)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does-not-exist: directory does not exist.*"
                       r"train-images-idx3-ubyte\[\.gz\].*dataset-fashion-mnist.*--data-dir"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "does-not-exist")
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(DataError, match=r"not a directory"):
        load_dataset("mnist", data_dir=f)


def test_count_mismatch(tmp_path: Path) -> None:
    d = _write_split_dir(tmp_path / "m", n_train_labels=19)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has 20 images but .*"
                       r"train-labels-idx1-ubyte has 19 labels"):
        load_dataset("mnist", data_dir=d)


def test_train_test_size_mismatch(tmp_path: Path) -> None:
    d = _write_split_dir(tmp_path / "m")
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((10, 27, 28), np.uint8))
    with pytest.raises(DataError, match=r"has 28x28 images but .*t10k-images-idx3-ubyte has 27x28"):
        load_dataset("mnist", data_dir=d)


def test_label_out_of_range(tmp_path: Path) -> None:
    d = _write_split_dir(tmp_path / "m", bad_label=10)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: label 10 at index 3 out of range \[0, 10\)"):
        load_dataset("mnist", data_dir=d)


def test_wrong_file_kind(tmp_path: Path) -> None:
    d = _write_split_dir(tmp_path / "m")
    write_idx(d / "train-images-idx3-ubyte", np.zeros(20, np.uint8))  # labels where images belong
    with pytest.raises(DataError, match=r"declares a 1-D tensor, expected 3-D"):
        load_dataset("mnist", data_dir=d)


def test_unknown_name_and_mnist_without_dir() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'cifar'; supported: fashion-mnist, embedded, mnist"):
        load_dataset("cifar")
    with pytest.raises(DataError, match=r"'mnist' needs data_dir.*t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist")
    with pytest.raises(DataError, match=r"'embedded' always loads from"):
        load_dataset("embedded", data_dir="/tmp")
    assert DATASETS == ("fashion-mnist", "embedded", "mnist")


def test_dataset_validation() -> None:
    x = np.zeros((4, 1, 5, 5), np.uint8)
    y = np.zeros(4, np.uint8)
    ok = Dataset("t", x, y, x, y, source="mem")
    assert "array" not in repr(ok) and repr(ok) == "Dataset('t', train=4, test=4, 1x5x5, from 'mem')"
    with pytest.raises(DataError, match=r"train split: images must be a uint8 array of shape \(N, 1, H, W\)"):
        Dataset("t", x.astype(np.int16), y, x, y, source="mem")
    with pytest.raises(DataError, match=r"test split: labels must be a 1-D uint8 array"):
        Dataset("t", x, y, x, y.astype(np.int64), source="mem")
    with pytest.raises(DataError, match=r"test split: 4 images but 3 labels"):
        Dataset("t", x, y, x, y[:3], source="mem")
    with pytest.raises(DataError, match=r"label 3 at index 0 out of range \[0, 2\)"):
        Dataset("t", x, y + 3, x, y, source="mem", classes=2)
    with pytest.raises(DataError, match=r"train images are 1x5x5 but test images are 1x5x6"):
        Dataset("t", x, y, np.zeros((4, 1, 5, 6), np.uint8), y, source="mem")


# --- embedded subset and the full dataset -------------------------------------


def _source_md_hashes() -> dict[str, str]:
    text = (EMBEDDED_DIR / "SOURCE.md").read_text(encoding="utf-8")
    # Only the sha256sum-format lines ("<hex>  <name>") list the embedded files.
    return {m[2]: m[1] for m in re.finditer(r"^([0-9a-f]{64})  (\S+)$", text, re.M)}


def test_embedded_dataset() -> None:
    ds = load_dataset("embedded")
    assert ds.name == "embedded"
    assert ds.train_images.shape == (6000, 1, 28, 28) and ds.test_images.shape == (1000, 1, 28, 28)
    for arr in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        assert arr.dtype == np.uint8
    assert np.bincount(ds.train_labels, minlength=10).tolist() == [600] * 10
    assert np.bincount(ds.test_labels, minlength=10).tolist() == [100] * 10


def test_embedded_hashes_match_source_md() -> None:
    hashes = _source_md_hashes()
    assert sorted(hashes) == sorted(f"{n}.gz" for n in IDX_FILES)
    for name, digest in hashes.items():
        assert hashlib.sha256((EMBEDDED_DIR / name).read_bytes()).hexdigest() == digest, name
    total = sum((EMBEDDED_DIR / n).stat().st_size for n in hashes)
    assert total < 4_000_000


def _first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Independent restatement of the selection rule: walk the file in order."""
    taken = [0] * 10
    keep = []
    for i, c in enumerate(labels.tolist()):
        if taken[c] < per_class:
            taken[c] += 1
            keep.append(i)
    return np.array(keep)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason=f"{FASHION_MNIST_DIR} not installed (Debian package dataset-fashion-mnist)")
def test_full_fashion_mnist_and_embedded_selection() -> None:
    full = load_dataset("fashion-mnist")
    assert full.train_images.shape == (60000, 1, 28, 28) and full.test_images.shape == (10000, 1, 28, 28)
    assert full.source == FASHION_MNIST_DIR
    emb = load_dataset("embedded")
    tr = _first_per_class(full.train_labels, 600)
    te = _first_per_class(full.test_labels, 100)
    np.testing.assert_array_equal(emb.train_images, full.train_images[tr])
    np.testing.assert_array_equal(emb.train_labels, full.train_labels[tr])
    np.testing.assert_array_equal(emb.test_images, full.test_images[te])
    np.testing.assert_array_equal(emb.test_labels, full.test_labels[te])
