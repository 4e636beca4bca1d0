"""Train a WAGE network with the integer golden model (or its float32 baseline).

    python -m golden.train --net lenet5 --dataset embedded --epochs 3 --out runs/lenet5

Writes ``DIR/metrics.json`` (per-epoch train loss, train and test error, final ``test_accuracy``),
``DIR/curve.png`` and ``DIR/checkpoint.npz`` after every epoch; ``--resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from .config import NETWORKS, ConfigError, WageConfig, parse_bits
from .data import DATASETS, DataError, Dataset, load_dataset
from .float_baseline import DEFAULT_BASE_LR, FloatNet
from . import model

__all__ = ["epoch_order", "scaled_schedule", "Run", "main"]

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
CURVE = "curve.png"


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training-set permutation of one epoch: host-side, seeded by (seed, epoch)."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(n)


def scaled_schedule(epochs: int) -> tuple[tuple[int, float], ...]:
    """The authors' schedule (η = 8 until 2/3 of training, 1 until 5/6, then 1/8) fitted to ``epochs``."""
    points = [(0, 8.0), (round(epochs * 2 / 3), 1.0), (round(epochs * 5 / 6), 0.125)]
    out: list[tuple[int, float]] = []
    for epoch, eta in points:
        if out and epoch <= out[-1][0]:
            continue
        out.append((epoch, eta))
    return tuple(out)


def parse_schedule(text: str) -> tuple[tuple[int, float], ...]:
    """``"0:8,200:1,250:1/8"`` → ((0, 8.0), (200, 1.0), (250, 0.125))."""
    pairs = []
    for item in text.split(","):
        try:
            epoch, eta = item.split(":")
            pairs.append((int(epoch), float(Fraction(eta.strip()))))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"lr schedule item {item!r}: expected EPOCH:ETA, for example 0:8,20:1,25:1/8") from None
    return tuple(pairs)


class Run:
    """One training run (integer WAGE or float baseline) with metrics and checkpoints in ``out``."""

    def __init__(self, config: WageConfig, dataset: Dataset, epochs: int, out: Path, use_float: bool = False,
                 base_lr: float = DEFAULT_BASE_LR, progress: bool = True, train_limit: int | None = None):
        if epochs < 1:
            raise ConfigError(f"epochs={epochs}: must be at least 1")
        self.config, self.dataset, self.epochs, self.out = config, dataset, epochs, Path(out)
        self.use_float, self.base_lr, self.progress = use_float, base_lr, progress
        self.train_images, self.train_labels = dataset.train_images, dataset.train_labels
        if train_limit is not None:
            self.train_images, self.train_labels = self.train_images[:train_limit], self.train_labels[:train_limit]
        self.steps_per_epoch = len(self.train_images) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch_size={config.batch_size} exceeds the {len(self.train_images)} training images")
        self.history: list[dict] = []
        self.epoch = 0
        if use_float:
            self.net = FloatNet(config, base_lr)
        else:
            self.weights = model.init_weights(config)

    # ---- checkpoints -----------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"config": self.config.to_dict(), "float": self.use_float, "base_lr": self.base_lr,
                "dataset": self.dataset.name, "epochs": self.epochs}

    def save_checkpoint(self) -> None:
        arrays = {}
        params = self.net.weights if self.use_float else self.weights
        for i, w in enumerate(params):
            arrays[f"w{i}"] = w
        if self.use_float:
            for i, v in enumerate(self.net.velocity):
                arrays[f"v{i}"] = v
        meta = dict(self._meta(), epoch=self.epoch, history=self.history)
        tmp = self.out / (CHECKPOINT + ".tmp.npz")
        np.savez(tmp, meta=json.dumps(meta), **arrays)
        tmp.replace(self.out / CHECKPOINT)

    def resume(self) -> None:
        path = self.out / CHECKPOINT
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"]))
                arrays = {k: f[k] for k in f.files if k != "meta"}
        except FileNotFoundError:
            raise ConfigError(f"--resume: no checkpoint at {path}") from None
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"--resume: {path} is not a readable checkpoint ({e})") from None
        mine = self._meta()
        for key in ("config", "float", "dataset"):
            if meta.get(key) != mine[key]:
                raise ConfigError(f"--resume: checkpoint {path} was made with {key}={meta.get(key)!r}, "
                                  f"this run has {key}={mine[key]!r}")
        n = len(self.config.layers)
        if self.use_float:
            self.net.weights = [arrays[f"w{i}"] for i in range(n)]
            self.net.velocity = [arrays[f"v{i}"] for i in range(n)]
        else:
            self.weights = [arrays[f"w{i}"].astype(np.int64) for i in range(n)]
        self.epoch, self.history = meta["epoch"], meta["history"]

    # ---- training --------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """Test error (fraction misclassified) on the whole test set."""
        images, labels = self.dataset.test_images, self.dataset.test_labels
        pred = self.net.predict(images) if self.use_float else model.predict(self.config, self.weights, images)
        return float(np.mean(pred != labels))

    def train_epoch(self) -> dict:
        cfg = self.config
        order = epoch_order(cfg.seed, self.epoch, len(self.train_images))
        eta_log2 = cfg.eta_log2(self.epoch)
        lr_factor = 2.0 ** (eta_log2 - cfg.eta_log2(0))
        loss_sum, err_sum, seen = 0.0, 0, 0
        t0 = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="step",
                       leave=True, dynamic_ncols=True, file=sys.stderr)
        for i in range(self.steps_per_epoch):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            images, labels = self.train_images[idx], self.train_labels[idx]
            if self.use_float:
                loss, errors = self.net.train_step(images, labels, lr_factor)
            else:
                step = self.epoch * self.steps_per_epoch + i
                self.weights, stats = model.train_step(cfg, self.weights, images, labels, step, eta_log2)
                loss, errors = stats.loss, stats.errors
            loss_sum += loss
            err_sum += errors
            seen += len(labels)
            if bar is not None:
                bar.update(1)
                if i % 10 == 0 or i == self.steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{loss_sum / seen:.3f}", err=f"{err_sum / seen:.3f}")
        train_seconds = time.perf_counter() - t0
        test_error = self.evaluate()
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", err=f"{err_sum / seen:.3f}", test_err=f"{test_error:.4f}")
            bar.close()
        return {"epoch": self.epoch + 1, "eta": 2.0 ** eta_log2 if not self.use_float else self.base_lr * lr_factor,
                "train_loss": loss_sum / seen, "train_error": err_sum / seen, "test_error": test_error,
                "train_seconds": round(train_seconds, 3), "images_per_second": round(seen / train_seconds, 1)}

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        while self.epoch < self.epochs:
            record = self.train_epoch()
            self.epoch += 1
            self.history.append(record)
            if not self.progress:
                print(f"epoch {record['epoch']}: loss {record['train_loss']:.4f} train error "
                      f"{record['train_error']:.4f} test error {record['test_error']:.4f}", flush=True)
            self.save_checkpoint()
            self.write_metrics()
        return self.write_metrics()

    def write_metrics(self) -> dict:
        metrics = dict(self._meta(), epochs_done=self.epoch, history=self.history,
                       test_accuracy=1.0 - self.history[-1]["test_error"] if self.history else None)
        (self.out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        if self.history:
            plot_curve(self.history, self.out / CURVE,
                       title=("float32 baseline" if self.use_float else "WAGE " + "-".join(
                           str(getattr(self.config, k)) for k in ("kW", "kA", "kG", "kE"))) + f", {self.config.net}")
        return metrics


def plot_curve(history: list[dict], path: Path, title: str, others: dict[str, list[dict]] | None = None) -> None:
    """Train and test error per epoch (and train loss) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    series = {title: history, **(others or {})}
    for name, hist in series.items():
        ep = [h["epoch"] for h in hist]
        line, = ax1.plot(ep, [100 * h["test_error"] for h in hist], marker="o", label=f"{name} test")
        ax1.plot(ep, [100 * h["train_error"] for h in hist], ls="--", color=line.get_color(), label=f"{name} train")
        ax2.plot(ep, [h["train_loss"] for h in hist], marker="o", color=line.get_color(), label=name)
    ax1.set_xlabel("epoch"); ax1.set_ylabel("error (%)"); ax1.grid(alpha=0.3); ax1.legend(fontsize=8)
    ax2.set_xlabel("epoch"); ax2.set_ylabel("SSE loss per sample"); ax2.grid(alpha=0.3); ax2.legend(fontsize=8)
    fig.suptitle(title if not others else "training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m golden.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default=None, help=f"preset ({', '.join(NETWORKS)}) or a shorthand such as "
                   "'32C5-MP2-64C5-MP2-512FC-10' (default lenet5)")
    p.add_argument("--dataset", default="embedded", choices=DATASETS, help="default: embedded (no download)")
    p.add_argument("--data-dir", help="directory with MNIST-format IDX files (needed for --dataset mnist)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bits", default=None, help="kW-kA-kG-kE, default 2-8-8-8")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr-schedule", help="EPOCH:ETA,... with ETA a power of two (default: the authors' "
                   "8 → 1 → 1/8 steps at 2/3 and 5/6 of --epochs)")
    p.add_argument("--config", help="a configuration JSON file; the options above override it")
    p.add_argument("--float", action="store_true", help="train the same network in float32 (the baseline)")
    p.add_argument("--base-lr", type=float, default=DEFAULT_BASE_LR, help="float baseline's initial rate")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--out", default="runs/train", help="output directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--no-progress", action="store_true", help="one line per epoch instead of a progress bar")
    return p


def config_from_args(args, image_shape: tuple[int, int, int]) -> WageConfig:
    """The run's configuration: --config (or the defaults), overridden by the explicit options."""
    base = WageConfig.load(args.config) if args.config else WageConfig()
    changes: dict = {}
    if args.net is not None:
        changes["net"] = args.net
        changes["input_shape"] = None if args.net in NETWORKS else image_shape
    if args.bits:
        changes.update(zip(("kW", "kA", "kG", "kE"), parse_bits(args.bits)))
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.lr_schedule:
        changes["lr_schedule"] = parse_schedule(args.lr_schedule)
    elif not args.config:
        changes["lr_schedule"] = scaled_schedule(args.epochs)
    return base.replace(**changes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
        config = config_from_args(args, dataset.train_images.shape[1:])
        if dataset.train_images.shape[1:] != config.input_shape:
            raise ConfigError(f"dataset {dataset.name} has images {dataset.train_images.shape[1:]}, "
                              f"net {config.net} expects {config.input_shape}")
        run = Run(config, dataset, args.epochs, Path(args.out), use_float=args.float, base_lr=args.base_lr,
                  progress=not args.no_progress, train_limit=args.train_limit)
        if args.resume:
            run.resume()
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(("float32 baseline of " if args.float else "") + config.summary(), flush=True)
    print(f"dataset {dataset!r}; {run.steps_per_epoch} steps per epoch; output {run.out}", flush=True)
    metrics = run.run()
    print(f"test accuracy {100 * metrics['test_accuracy']:.2f}% after {metrics['epochs_done']} epochs; "
          f"metrics in {run.out / METRICS}, curve in {run.out / CURVE}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
