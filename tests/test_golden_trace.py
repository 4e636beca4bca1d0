"""Golden traces: the file format hardware testbenches read, and that a comparison catches one bit."""

import numpy as np
import pytest

from golden import trace as gtrace
from golden.config import WageConfig
from golden.data import DataError, load_dataset


def test_trace_command_writes_a_loadable_file(tmp_path, capsys):
    out = tmp_path / "mlp.npz"
    assert gtrace.main(["--net", "mlp", "--steps", "2", "--seed", "4", "--batch-size", "32", "--out", str(out)]) == 0
    config, meta, arrays = gtrace.load_trace(out)
    assert config == WageConfig(net="mlp", seed=4, batch_size=32)
    assert meta["steps"] == 2 and meta["eta_log2"] == [3, 3]
    for name in ("A_in", "P", "A", "mask_relu", "mask_sat", "D", "E_q", "E", "G", "R", "dW", "W_before", "W_after"):
        assert f"s1/l0/{name}" in arrays, name
    assert arrays["s0/x"].dtype == np.uint8 and arrays["s0/x"].shape == (32, 1, 28, 28)
    assert np.array_equal(arrays["init/l0/Ws"], arrays["s0/l0/W_before"])
    assert "tensors written" in capsys.readouterr().out


def test_trace_is_reproducible_and_one_flipped_bit_is_caught():
    ds = load_dataset("embedded")
    cfg = WageConfig(net="8C5-MP2-16FC-10", input_shape=(1, 28, 28), batch_size=8, seed=9)
    a = gtrace.make_trace(cfg, ds.train_images, ds.train_labels, 2)
    b = gtrace.make_trace(cfg, ds.train_images, ds.train_labels, 2)
    assert gtrace.diff_traces(a, b) == []
    for name in ("s1/l0/W_after", "s0/l1/E", "s1/l0/R", "s0/l0/pool_idx"):
        mutated = dict(b)
        arr = mutated[name].copy()
        flat = arr.reshape(-1)
        flat[len(flat) // 2] ^= 1
        mutated[name] = arr
        assert gtrace.diff_traces(a, mutated) == [name]
    del b["s0/l1/G"]
    assert gtrace.diff_traces(a, b) == ["s0/l1/G"]


def test_load_trace_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        gtrace.load_trace(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz"):
        gtrace.load_trace(junk)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(DataError, match="not a golden trace"):
        gtrace.load_trace(other)


def test_trace_needs_enough_images(capsys):
    assert gtrace.main(["--steps", "100", "--out", "/tmp/never.npz"]) == 2
    assert "need 12800 images" in capsys.readouterr().err
