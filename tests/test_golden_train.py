"""The training command: metrics, curve, checkpoints, bit-exact resume, float baseline, bad input."""

import json

import numpy as np
import pytest

from golden import train
from golden.config import ConfigError

QUICK = ["--net", "mlp", "--dataset", "embedded", "--train-limit", "1024", "--batch-size", "64",
         "--no-progress", "--seed", "3"]


def weights_of(out):
    with np.load(out / train.CHECKPOINT) as f:
        return [f[k] for k in sorted(f.files) if k.startswith("w")]


def test_train_writes_metrics_curve_and_checkpoint(tmp_path, capsys):
    assert train.main(QUICK + ["--epochs", "2", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_done"] == 2 and len(metrics["history"]) == 2
    for rec in metrics["history"]:
        assert {"epoch", "train_loss", "train_error", "test_error", "eta"} <= set(rec)
    assert metrics["test_accuracy"] == pytest.approx(1 - metrics["history"][-1]["test_error"])
    assert metrics["history"][0]["eta"] == 8.0 and metrics["history"][1]["eta"] == 1.0
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in capsys.readouterr().out


def test_resume_is_bit_exact(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    sched = ["--lr-schedule", "0:8,2:1"]
    assert train.main(QUICK + sched + ["--epochs", "3", "--out", str(straight)]) == 0
    assert train.main(QUICK + sched + ["--epochs", "1", "--out", str(split)]) == 0
    assert train.main(QUICK + sched + ["--epochs", "3", "--out", str(split), "--resume"]) == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights_of(straight), weights_of(split)))
    a = json.loads((straight / "metrics.json").read_text())["history"]
    b = json.loads((split / "metrics.json").read_text())["history"]
    assert [r["test_error"] for r in a] == [r["test_error"] for r in b]


def test_float_baseline_learns(tmp_path):
    assert train.main(QUICK + ["--float", "--epochs", "2", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["float"] is True
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert metrics["test_accuracy"] > 0.6


@pytest.mark.parametrize("args, message", [
    (["--bits", "2-8-8"], "bits '2-8-8'"),
    (["--bits", "2-8-8-16"], "kE=16"),
    (["--net", "32X5-10"], "32X5"),
    (["--dataset", "mnist"], "data_dir|--data-dir"),
    (["--lr-schedule", "0:3"], "eta=3"),
    (["--lr-schedule", "zero"], "EPOCH:ETA"),
    (["--epochs", "0"], "epochs=0"),
    (["--resume"], "no checkpoint"),
    (["--batch-size", "5000"], "batch_size=5000"),
])
def test_bad_input_gives_a_clear_error(tmp_path, capsys, args, message):
    argv = QUICK + ["--epochs", "1", "--out", str(tmp_path / "run")] + args
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and pytest.importorskip("re").search(message, err), err


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    assert train.main(QUICK + ["--epochs", "1", "--out", str(tmp_path)]) == 0
    assert train.main(QUICK + ["--epochs", "2", "--out", str(tmp_path), "--resume", "--bits", "2-8-8-6"]) == 2
    assert "config" in capsys.readouterr().err


def test_scaled_schedule_follows_the_authors_proportions():
    assert train.scaled_schedule(300) == ((0, 8.0), (200, 1.0), (250, 0.125))
    assert train.scaled_schedule(12) == ((0, 8.0), (8, 1.0), (10, 0.125))
    assert train.scaled_schedule(1) == ((0, 8.0), (1, 1.0))
    with pytest.raises(ConfigError):
        train.parse_schedule("0:1/0")


def test_epoch_order_is_a_seeded_permutation():
    a = train.epoch_order(1, 0, 100)
    assert sorted(a) == list(range(100))
    assert np.array_equal(a, train.epoch_order(1, 0, 100))
    assert not np.array_equal(a, train.epoch_order(1, 1, 100))
