"""Data layer of the golden model: IDX file I/O and the supported image datasets.

Datasets are returned as uint8 tensors of shape (N, 1, H, W) with uint8 labels;
any scaling to the integer training format happens elsewhere, so the bytes here
are exactly the bytes of the source files.

Every problem with a data file or directory raises :class:`DataError` whose
message names the path, what was expected and what was found.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

PathLike = Union[str, os.PathLike]

DATASETS: tuple[str, ...] = ("fashion-mnist", "embedded", "mnist")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
EMBEDDED_DIR = Path(__file__).parent / "data" / "embedded"

# Logical file names in the order (train images, train labels, test images,
# test labels); these are the names used by both MNIST and Fashion-MNIST.
IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_HINT = (
    "install Debian's dataset-fashion-mnist (`make setup` does it when run as root "
    "with apt) or pass --data-dir DIR with the IDX files"
)

# IDX type code -> (big-endian on-disk dtype, human name).
IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: (">u1", "uint8"),
    0x09: (">i1", "int8"),
    0x0B: (">i2", "int16"),
    0x0C: (">i4", "int32"),
    0x0D: (">f4", "float32"),
    0x0E: (">f8", "float64"),
}
_CODE_BY_NAME = {name: code for code, (_, name) in IDX_TYPES.items()}
_MAX_NDIM = 4
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data file or directory is missing, unreadable or malformed."""


def _supported_types() -> str:
    return ", ".join(f"0x{c:02X} {n}" for c, (_, n) in IDX_TYPES.items())


def _dims_str(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims) if dims else "()"


def _read_bytes(path: Path) -> bytes:
    """Whole file, transparently gunzipped when it starts with the gzip magic."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e.strerror or e}") from e
    # Detect gzip by content, not name: downloads are often renamed or
    # already decompressed by a browser while keeping the .gz suffix.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: corrupt or truncated gzip stream "
            f"({len(raw)} compressed bytes): {e}"
        ) from e


def read_idx(
    path: PathLike, *, ndim: int | None = None, dtype: str | None = None
) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a writable native-byte-order array.

    ``ndim`` and ``dtype`` (e.g. ``"uint8"``), when given, are checked against the
    header so a wrong file gives a precise message instead of a bad shape later.
    """
    path = Path(path)
    if dtype is not None and dtype not in _CODE_BY_NAME:
        raise ValueError(f"unsupported IDX dtype {dtype!r}; supported: {_supported_types()}")
    data = _read_bytes(path)
    not_gzip_note = (
        " (note: the name ends in .gz but the file is not gzip-compressed)"
        if path.suffix == ".gz" and data[:2] != _GZIP_MAGIC
        else ""
    )

    if len(data) == 0:
        raise DataError(f"{path}: empty file (0 bytes), expected an IDX header")
    if len(data) < 4:
        raise DataError(
            f"{path}: {len(data)} bytes, too short for the 4-byte IDX magic{not_gzip_note}"
        )
    magic = int.from_bytes(data[:4], "big")
    code, nd = data[2], data[3]
    if ndim is not None and dtype is not None:
        want_magic = (_CODE_BY_NAME[dtype] << 8) | ndim
        want = f"0x{want_magic:08X} for a {dtype} {ndim}-D tensor"
    else:
        want = "0x0000TTNN: two zero bytes, a type code TT, a dimension count NN"
    # A zero type code is not a type at all; reporting it as a bad magic fits
    # the usual cause (a zero-filled or non-IDX file) better than "unsupported type".
    if data[0] != 0 or data[1] != 0 or code == 0:
        raise DataError(f"{path}: bad IDX magic 0x{magic:08X} (expected {want}){not_gzip_note}")
    if code not in IDX_TYPES:
        raise DataError(
            f"{path}: unsupported IDX type code 0x{code:02X} in magic 0x{magic:08X} "
            f"(supported: {_supported_types()})"
        )
    disk_dtype, type_name = IDX_TYPES[code]
    if dtype is not None and type_name != dtype:
        raise DataError(
            f"{path}: IDX type code 0x{code:02X} ({type_name}) in magic 0x{magic:08X}, "
            f"expected 0x{_CODE_BY_NAME[dtype]:02X} ({dtype})"
        )
    if not 1 <= nd <= _MAX_NDIM:
        raise DataError(
            f"{path}: IDX magic 0x{magic:08X} declares {nd} dimensions "
            f"(expected 1..{_MAX_NDIM})"
        )
    if ndim is not None and nd != ndim:
        raise DataError(
            f"{path}: IDX magic 0x{magic:08X} declares a {nd}-D tensor, expected {ndim}-D"
        )

    header_len = 4 + 4 * nd
    if len(data) < header_len:
        raise DataError(
            f"{path}: truncated IDX header: a {nd}-D tensor needs {header_len} header "
            f"bytes, file has {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    itemsize = np.dtype(disk_dtype).itemsize
    expected = itemsize
    for d in dims:
        expected *= d  # Python ints: no overflow for hostile headers
    found = len(data) - header_len
    if found != expected:
        kind = "truncated payload" if found < expected else "trailing bytes after payload"
        raise DataError(
            f"{path}: {kind}: {_dims_str(dims)} {type_name} needs {expected} bytes "
            f"after the {header_len}-byte header, found {found}"
        )
    arr = np.frombuffer(data, dtype=disk_dtype, offset=header_len)
    # astype copies: the result is writable (frombuffer over bytes is read-only)
    # and in native byte order, so callers can treat it as an ordinary array.
    return arr.astype(np.dtype(disk_dtype).newbyteorder("="), copy=True).reshape(dims)


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX; gzip (mtime 0, byte-reproducible) if path ends in .gz."""
    path = Path(path)
    array = np.asarray(array)
    code = _CODE_BY_NAME.get(array.dtype.name)
    if code is None:
        raise DataError(
            f"{path}: cannot write dtype {array.dtype} as IDX (supported: {_supported_types()})"
        )
    if not 1 <= array.ndim <= _MAX_NDIM:
        raise DataError(f"{path}: cannot write a {array.ndim}-D array as IDX (need 1..{_MAX_NDIM})")
    if any(d >= 1 << 32 for d in array.shape):
        raise DataError(f"{path}: dimension too large for IDX: {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    payload = np.ascontiguousarray(array, dtype=IDX_TYPES[code][0]).tobytes()
    blob = header + payload
    if path.suffix == ".gz":
        # No file name in the header and mtime 0, so identical arrays give identical files.
        blob = gzip.compress(blob, compresslevel=9, mtime=0)
    # Write-then-rename so an interrupted run never leaves a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write file: {e.strerror or e}") from e


@dataclass(frozen=True, eq=False)  # eq=False: element-wise == on arrays is not a bool
class Dataset:
    """An image-classification dataset: uint8 images (N, 1, H, W), uint8 labels (N,)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    classes: int = 10

    def __post_init__(self) -> None:
        if not 1 <= self.classes <= 256:
            raise DataError(f"dataset {self.name!r}: classes={self.classes}, expected 1..256 (uint8 labels)")
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            where = f"dataset {self.name!r} ({self.source}), {split} split"
            if not (
                isinstance(images, np.ndarray)
                and images.dtype == np.uint8
                and images.ndim == 4
                and images.shape[1] == 1
            ):
                raise DataError(
                    f"{where}: images must be a uint8 array of shape (N, 1, H, W), got "
                    f"{_describe(images)}"
                )
            if not (isinstance(labels, np.ndarray) and labels.dtype == np.uint8 and labels.ndim == 1):
                raise DataError(f"{where}: labels must be a 1-D uint8 array, got {_describe(labels)}")
            if images.shape[0] == 0:
                raise DataError(f"{where}: no images")
            if labels.shape[0] != images.shape[0]:
                raise DataError(
                    f"{where}: {images.shape[0]} images but {labels.shape[0]} labels"
                )
            if int(labels.max()) >= self.classes:
                idx = int(np.argmax(labels >= self.classes))
                raise DataError(
                    f"{where}: label {int(labels[idx])} at index {idx} out of range "
                    f"[0, {self.classes})"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DataError(
                f"dataset {self.name!r} ({self.source}): train images are "
                f"{_dims_str(self.train_images.shape[1:])} but test images are "
                f"{_dims_str(self.test_images.shape[1:])}"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_images.shape[1:]
        return (c, h, w)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, {_dims_str(self.image_shape)}, from {self.source!r})"
        )


def _describe(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


def _expected_names() -> str:
    return ", ".join(f"{n}[.gz]" for n in IDX_FILES)


def _candidates(name: str) -> list[str]:
    # The dotted spelling (t10k-images.idx3-ubyte) is what some mirrors and
    # torchvision-era archives use after extraction.
    dotted = name.replace("-idx", ".idx")
    return [name, name + ".gz", dotted, dotted + ".gz"]


def find_idx_files(directory: PathLike, hint: str = "") -> dict[str, Path]:
    """Map each logical IDX name in :data:`IDX_FILES` to its file in ``directory``."""
    directory = Path(directory)
    suffix = f"; {hint}" if hint else ""
    if not directory.exists():
        raise DataError(
            f"{directory}: directory does not exist; expected {_expected_names()}{suffix}"
        )
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; expected a directory with {_expected_names()}{suffix}")
    try:
        present = sorted(p.name for p in directory.iterdir())
    except OSError as e:
        raise DataError(f"{directory}: cannot list directory: {e.strerror or e}") from e
    found: dict[str, Path] = {}
    for logical in IDX_FILES:
        for cand in _candidates(logical):
            if cand in present and (directory / cand).is_file():
                found[logical] = directory / cand
                break
    if not found:
        shown = ", ".join(present[:20]) + (f", ... ({len(present)} entries)" if len(present) > 20 else "")
        raise DataError(
            f"no MNIST-format files in {directory}: expected {_expected_names()}; "
            f"found: {shown or '(empty directory)'}{suffix}"
        )
    missing = [n for n in IDX_FILES if n not in found]
    if missing:
        raise DataError(
            f"{directory}: missing {', '.join(m + '[.gz]' for m in missing)} "
            f"(found {', '.join(p.name for p in found.values())}){suffix}"
        )
    return found


def _load_idx_dir(name: str, directory: PathLike, hint: str = "", classes: int = 10) -> Dataset:
    files = find_idx_files(directory, hint)
    train_x, train_y, test_x, test_y = (files[n] for n in IDX_FILES)
    splits = []
    for img_path, lbl_path in ((train_x, train_y), (test_x, test_y)):
        images = read_idx(img_path, ndim=3, dtype="uint8")
        labels = read_idx(lbl_path, ndim=1, dtype="uint8")
        # Checked here, not only in Dataset, so the message names both files.
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{img_path} has {images.shape[0]} images but {lbl_path} has "
                f"{labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= classes:
            idx = int(np.argmax(labels >= classes))
            raise DataError(
                f"{lbl_path}: label {int(labels[idx])} at index {idx} out of range [0, {classes})"
            )
        splits.append((images, labels))
    (tr_x, tr_y), (te_x, te_y) = splits
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise DataError(
            f"{train_x} has {_dims_str(tr_x.shape[1:])} images but {test_x} has "
            f"{_dims_str(te_x.shape[1:])} images"
        )
    return Dataset(
        name=name,
        train_images=tr_x[:, None, :, :],
        train_labels=tr_y,
        test_images=te_x[:, None, :, :],
        test_labels=te_y,
        source=str(Path(directory)),
        classes=classes,
    )


def load_dataset(name: str, data_dir: PathLike | None = None) -> Dataset:
    """Load a dataset by name.

    - ``"fashion-mnist"``: from ``data_dir`` or :data:`FASHION_MNIST_DIR`.
    - ``"mnist"``: from ``data_dir`` (required), MNIST IDX files, plain or .gz.
    - ``"embedded"``: the committed subset in :data:`EMBEDDED_DIR`; passing
      ``data_dir`` is an error rather than silently ignored, since the caller
      evidently expected the files to come from elsewhere.
    """
    if name == "fashion-mnist":
        directory = FASHION_MNIST_DIR if data_dir is None else data_dir
        return _load_idx_dir(name, directory, hint=FASHION_MNIST_HINT)
    if name == "mnist":
        if data_dir is None:
            raise DataError(
                "dataset 'mnist' needs data_dir (--data-dir DIR): a directory with "
                f"the MNIST IDX files {_expected_names()}"
            )
        return _load_idx_dir(name, data_dir, hint="pass --data-dir DIR with the MNIST IDX files")
    if name == "embedded":
        if data_dir is not None:
            raise DataError(
                f"dataset 'embedded' always loads from {EMBEDDED_DIR}; got data_dir={str(data_dir)!r} "
                "(use 'fashion-mnist' or 'mnist' to load from a directory)"
            )
        return _load_idx_dir(
            name, EMBEDDED_DIR, hint="regenerate with `python -m golden.make_embedded`"
        )
    raise DataError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
