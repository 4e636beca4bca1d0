"""Golden-model speed: images/s of WAGE integer training versus float32 NumPy training, one run.

    python benchmarks/golden_speed.py [--nets mlp lenet5] [--steps N] [--dataset fashion-mnist]

For each network, times one training epoch (or its first ``--steps`` steps) of the integer WAGE
model and of the float32 baseline (golden.float_baseline: the same layers, im2col + BLAS, SGD),
alternating the two in one process on the same batches, and prints images/s and their ratio.
Target (issue 2): ratio ≥ 0.5 for LeNet-5 and the MLP. Results go to
benchmarks/results/golden_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from golden import model  # noqa: E402
from golden.config import WageConfig  # noqa: E402
from golden.data import load_dataset  # noqa: E402
from golden.float_baseline import FloatNet  # noqa: E402
from golden.train import epoch_order  # noqa: E402


def time_epoch(config, dataset, steps):
    order = epoch_order(config.seed, 0, len(dataset.train_images))
    b = config.batch_size
    batches = [(dataset.train_images[order[i * b:(i + 1) * b]], dataset.train_labels[order[i * b:(i + 1) * b]])
               for i in range(steps)]
    weights = model.init_weights(config)
    net = FloatNet(config)
    # Warm-up outside the timing (first-call allocations, BLAS thread start).
    model.train_step(config, weights, *batches[0], 0, 3)
    net.train_step(*batches[0], 1.0)
    net = FloatNet(config)
    t_wage = t_float = 0.0
    for s, (x, y) in enumerate(batches):       # interleaved, so machine load affects both alike
        t0 = time.perf_counter()
        weights, _ = model.train_step(config, weights, x, y, s, 3)
        t1 = time.perf_counter()
        net.train_step(x, y, 1.0)
        t2 = time.perf_counter()
        t_wage += t1 - t0
        t_float += t2 - t1
    images = steps * b
    return images / t_wage, images / t_float


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", nargs="+", default=["mlp", "lenet5"])
    p.add_argument("--dataset", default="fashion-mnist" if Path("/usr/share/datasets/fashion-mnist").is_dir() else "embedded")
    p.add_argument("--steps", type=int, default=None, help="steps to time (default: one whole epoch)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "golden_speed.json"))
    args = p.parse_args(argv)
    dataset = load_dataset(args.dataset)
    results = {"dataset": repr(dataset), "machine": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores, numpy {np.__version__}", "nets": {}}
    print(f"{'net':8} {'WAGE img/s':>11} {'float32 img/s':>14} {'ratio':>7}")
    for net in args.nets:
        config = WageConfig(net=net)
        steps = args.steps or len(dataset.train_images) // config.batch_size
        wage, flt = time_epoch(config, dataset, steps)
        results["nets"][net] = {"steps": steps, "batch": config.batch_size, "wage_images_per_s": round(wage, 1),
                                "float32_images_per_s": round(flt, 1), "ratio": round(wage / flt, 3),
                                "target_ratio": 0.5, "met": wage / flt >= 0.5}
        print(f"{net:8} {wage:11.0f} {flt:14.0f} {wage / flt:7.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
