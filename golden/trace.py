"""Golden traces: every named tensor of K training steps, the contract hardware testbenches check.

    python -m golden.trace --net mlp --steps 4 --seed 1 --out mlp.npz

The ``.npz`` holds integer arrays under these names (``s`` the global step, ``l`` the weight-layer
index, shapes per batch ``B``):

==================  =========================================================================
``config``          the WageConfig JSON (0-d string)
``meta``            JSON: format version, steps, per-step log2 η, dataset, names
``init/l{l}/Ws``    stored weights before the first step
``s{s}/x``          the batch's uint8 images (B, C, H, W); ``s{s}/y`` the labels (B,)
``s{s}/l{l}/A_in``  the layer's input activations (for l = 0 the input codes)
``.../Wq``          forward weight codes (ternary for kW = 2)
``.../P``           product sums Σ A·Wq, before pooling (B, O[, Ho, Wo])
``.../P_pool``      pooled sums (pooled layers only); ``.../pool_idx`` the 2×2 window arg-max 0..3
``.../A``           quantised activations (absent for a raw output layer)
``.../mask_relu``   [pooled P > 0] (hidden layers); ``.../mask_sat`` Q_A's pass mask on the unquantised value
``.../D``           error sums reaching the layer's output (last layer: the SSE loss error)
``.../n_E``         Q_E's Shift exponent (absent when D was all zero)
``.../E_q``         Q_E output; ``.../E`` the error after the ReLU mask and pool scatter (at P's shape)
``.../G``           gradient sums Σ A_in·E, shaped like the weights
``.../q_G``         Q_G's right shift n_G − log2 η (absent when G was all zero: no update)
``.../R``           stochastic-rounding draws, shaped like the weights
``.../dW``          weight increments; ``.../W_before``, ``.../W_after`` stored weights around the update
==================  =========================================================================
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

from .config import NETWORKS, ConfigError, WageConfig, parse_bits
from .data import DATASETS, DataError, load_dataset
from . import model

__all__ = ["FORMAT", "make_trace", "embedded_trace", "load_trace", "diff_traces", "main"]

FORMAT = "wage-trace-1"


def make_trace(config: WageConfig, images: np.ndarray, labels: np.ndarray, steps: int,
               eta_log2: int | None = None, weights: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run ``steps`` training steps on consecutive batches of ``images`` and record everything.

    Step s uses images[s·B:(s+1)·B]; η is the schedule's epoch-0 value unless ``eta_log2`` is given.
    """
    b = config.batch_size
    if steps < 1:
        raise ConfigError(f"steps={steps}: must be at least 1")
    if len(images) < steps * b:
        raise ConfigError(f"{steps} steps of batch {b} need {steps * b} images, only {len(images)} given")
    eta = config.eta_log2(0) if eta_log2 is None else eta_log2
    weights = model.init_weights(config) if weights is None else weights
    trace: dict[str, np.ndarray] = {}
    for i, w in enumerate(weights):
        trace[f"init/l{i}/Ws"] = w.copy()
    for s in range(steps):
        weights, _ = model.train_step(config, weights, images[s * b:(s + 1) * b], labels[s * b:(s + 1) * b],
                                      s, eta, trace=trace)
    meta = {"format": FORMAT, "steps": steps, "eta_log2": [eta] * steps, "names": sorted(
        {k.split("/", 2)[-1] for k in trace if k.startswith("s0/l")})}
    trace["config"] = np.array(config.to_json(indent=None))
    trace["meta"] = np.array(json.dumps(meta))
    return trace


@functools.lru_cache(maxsize=4)
def embedded_trace(config: WageConfig, steps: int) -> dict[str, np.ndarray]:
    """:func:`make_trace` on the embedded data set, cached per (config, steps): what testbenches check."""
    dataset = load_dataset("embedded")
    return make_trace(config, dataset.train_images, dataset.train_labels, steps)


def load_trace(path: str | Path) -> tuple[WageConfig, dict, dict[str, np.ndarray]]:
    """Read a trace file: (config, meta, arrays). Errors name the file and what is wrong."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"trace file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz trace ({e})") from None
    for key in ("config", "meta"):
        if key not in arrays:
            raise DataError(f"{path}: not a golden trace (no '{key}' entry)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: trace format {meta.get('format')!r}, expected {FORMAT!r}")
    config = WageConfig.from_json(str(arrays.pop("config")))
    return config, meta, arrays


def diff_traces(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> list[str]:
    """Names whose arrays differ in shape or in any element (or exist on one side only), sorted."""
    bad = []
    for name in sorted(set(expected) | set(actual)):
        a, b = expected.get(name), actual.get(name)
        if a is None or b is None or np.shape(a) != np.shape(b) or not np.array_equal(a, b):
            bad.append(name)
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m golden.trace", description="Record a golden trace of K training steps.")
    p.add_argument("--net", default="mlp", help=f"preset ({', '.join(NETWORKS)}) or a shorthand (default mlp)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bits", default="2-8-8-8")
    p.add_argument("--batch-size", type=int, default=None, help="default: the configuration's (128)")
    p.add_argument("--config", help="configuration JSON (the options above override it)")
    p.add_argument("--dataset", default="embedded", choices=DATASETS)
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True, help="output .npz file")
    args = p.parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, args.data_dir)
        base = WageConfig.load(args.config) if args.config else WageConfig()
        changes = dict(zip(("kW", "kA", "kG", "kE"), parse_bits(args.bits)), seed=args.seed, net=args.net,
                       input_shape=None if args.net in NETWORKS else dataset.train_images.shape[1:])
        if args.batch_size is not None:
            changes["batch_size"] = args.batch_size
        config = base.replace(**changes)
        trace = make_trace(config, dataset.train_images, dataset.train_labels, args.steps)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **trace)
    print(f"{args.steps} steps of {config.summary().splitlines()[0]}: {len(trace)} tensors written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
