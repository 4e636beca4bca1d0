"""Build the committed Fashion-MNIST subset in golden/data/embedded/.

Selection rule (deterministic, no randomness): the first 600 images of each
class from the training set and the first 100 of each class from the test set,
in original file order; the selected images keep their original relative order.

    python -m golden.make_embedded [--source DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from golden.data import (
    EMBEDDED_DIR,
    FASHION_MNIST_DIR,
    IDX_FILES,
    DataError,
    find_idx_files,
    load_dataset,
    write_idx,
)

TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100
CLASSES = 10

LICENSE_TEXT = """\
The MIT License (MIT) Copyright © 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of
this software and associated documentation files (the “Software”), to deal in
the Software without restriction, including without limitation the rights to
use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of
the Software, and to permit persons to whom the Software is furnished to do so,
subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED “AS IS”, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS
FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN
AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION
WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def select_first_per_class(labels: np.ndarray, per_class: int, classes: int = CLASSES) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class, in ascending order."""
    picked = []
    for c in range(classes):
        idx = np.flatnonzero(labels == c)
        if idx.size < per_class:
            raise DataError(f"class {c} has only {idx.size} samples, need {per_class}")
        picked.append(idx[:per_class])
    # Sorting restores the original file order across classes.
    return np.sort(np.concatenate(picked))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _debian_version() -> str | None:
    # Provenance only; absent on non-Debian hosts or when the files came from elsewhere.
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "dataset-fashion-mnist"],
            capture_output=True, text=True, check=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _source_md(source: Path, src_files: dict[str, Path], out_files: list[Path]) -> str:
    version = _debian_version() if source == Path(FASHION_MNIST_DIR) else None
    pkg = f" (version {version})" if version else ""
    src_rows = "\n".join(
        f"| `{p.name}` | `{sha256_file(p)}` |" for p in (src_files[n] for n in IDX_FILES)
    )
    sums = "\n".join(f"{sha256_file(p)}  {p.name}" for p in out_files)
    sizes = "\n".join(f"| `{p.name}` | {p.stat().st_size} |" for p in out_files)
    return f"""\
# Embedded Fashion-MNIST subset

A small, real subset of **Fashion-MNIST** by Zalando Research
(<https://github.com/zalandoresearch/fashion-mnist>), taken from the files
installed by Debian's `dataset-fashion-mnist` package{pkg} in
`{FASHION_MNIST_DIR}`. It lets the golden model and the tests run without the
full dataset installed.

## Selection rule

- Training set: the first {TRAIN_PER_CLASS} images of each of the {CLASSES} classes,
  in original file order → {TRAIN_PER_CLASS * CLASSES} images.
- Test set: the first {TEST_PER_CLASS} images of each class from the test set
  → {TEST_PER_CLASS * CLASSES} images.
- Selected images keep their original relative order (no shuffling, no randomness).

The files are IDX (same format and names as the originals), gzip-compressed
with mtime 0 so that regeneration is byte-reproducible.

## Regenerate

From the repository root:

```sh
python -m golden.make_embedded --source {FASHION_MNIST_DIR} --out golden/data/embedded
```

## SHA-256 of the files in this directory

```
{sums}
```

Sizes in bytes:

| file | bytes |
|------|-------|
{sizes}

## SHA-256 of the source files used

| file | sha256 |
|------|--------|
{src_rows}

## Licence

Fashion-MNIST is distributed under the MIT licence:

```
{LICENSE_TEXT}```
"""


def build(source: Path, out: Path) -> list[Path]:
    """Write the subset's IDX files and SOURCE.md into ``out``; return the IDX paths."""
    # Checked first so a missing source names this script's --source option.
    src_files = find_idx_files(
        source, hint="install Debian's dataset-fashion-mnist or pass --source DIR with the IDX files"
    )
    ds = load_dataset("fashion-mnist", data_dir=source)
    train_idx = select_first_per_class(ds.train_labels, TRAIN_PER_CLASS)
    test_idx = select_first_per_class(ds.test_labels, TEST_PER_CLASS)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create directory: {e.strerror or e}") from e
    arrays = (
        ds.train_images[train_idx, 0],  # IDX stores images as (N, H, W)
        ds.train_labels[train_idx],
        ds.test_images[test_idx, 0],
        ds.test_labels[test_idx],
    )
    out_files = [out / f"{name}.gz" for name in IDX_FILES]
    for path, arr in zip(out_files, arrays):
        write_idx(path, arr)
    md = out / "SOURCE.md"
    try:
        md.write_text(_source_md(source, src_files, out_files), encoding="utf-8")
    except OSError as e:
        raise DataError(f"{md}: cannot write file: {e.strerror or e}") from e
    return out_files


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(
        prog="python -m golden.make_embedded", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--source", type=Path, default=Path(FASHION_MNIST_DIR),
                    help=f"directory with the Fashion-MNIST IDX files (default {FASHION_MNIST_DIR})")
    ap.add_argument("--out", type=Path, default=EMBEDDED_DIR,
                    help=f"output directory (default {EMBEDDED_DIR})")
    args = ap.parse_args(argv)
    try:
        files = build(args.source, args.out)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in files:
        print(f"{p}  {p.stat().st_size} bytes")
    print(args.out / "SOURCE.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
