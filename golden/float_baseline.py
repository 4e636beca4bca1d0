"""The float32 baseline: the same network as the WAGE model, trained without any quantiser.

Same layers, the same initial weights (before quantisation) divided by the same per-layer α — the
float network trains the effective weights W/α directly, so one learning rate suits every layer
(training W with a fixed α would scale each layer's rate by 1/α²) — the same SSE loss and the same learning-rate schedule *shape* (the rate drops by the same factors at
the same epochs). WAGE's η acts on Shift-normalised gradients and has no float equivalent, so the
float rate is ``base_lr · η(epoch)/η(0)`` with SGD and momentum 0.9 — a conventional, tuned float
recipe, so the comparison is against a fair baseline rather than a handicapped one.
"""

from __future__ import annotations

import numpy as np

from .config import WageConfig
from .ops import col2im, im2col, maxpool2, maxpool2_backward

__all__ = ["FloatNet", "DEFAULT_BASE_LR", "MOMENTUM"]

DEFAULT_BASE_LR = 0.05
MOMENTUM = 0.9


class FloatNet:
    """Float32 training of ``config``'s network; ``weights`` are float32 arrays in real units."""

    def __init__(self, config: WageConfig, base_lr: float = DEFAULT_BASE_LR, weights: list[np.ndarray] | None = None):
        self.config = config
        self.base_lr = float(base_lr)
        if weights is None:
            rng = np.random.Generator(np.random.PCG64(config.seed))
            weights = []
            for layer in config.layers:   # the integer model's draw, in the same order, unquantised
                limit = np.sqrt((3.0 if config.init_limit == "sqrt3" else 6.0) / layer.fan_in)
                limit = max(limit, 1.5 * config.sigma(config.kW))
                w = rng.uniform(-limit, limit, size=layer.weight_shape) / 2.0 ** layer.alpha_log2
                weights.append(w.astype(np.float32))
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]
        self.velocity = [np.zeros_like(w) for w in self.weights]

    def inputs(self, images: np.ndarray) -> np.ndarray:
        """The same input map as the integer model, as real values."""
        return (self.config.input_table()[images] * 2.0 ** -(self.config.kA - 1)).astype(np.float32)

    def forward(self, x: np.ndarray):
        caches = []
        a = x
        for layer, w in zip(self.config.layers, self.weights):
            b = a.shape[0]
            if layer.kind == "fc":
                cols = a.reshape(b, -1)
                p = cols @ w.T
            else:
                o, _, ho, wo = (layer.out_channels, *layer.product_shape)
                cols = im2col(a, layer.kernel, layer.padding)
                p = (cols @ w.reshape(o, -1).T).reshape(b, ho, wo, o).transpose(0, 3, 1, 2)
            idx = None
            if layer.pool:
                p, idx = maxpool2(p)
            out = p if layer.last else np.maximum(p, 0)
            caches.append((a, cols, p, idx))
            a = out
        return a, caches

    def predict(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        out = [np.argmax(self.forward(self.inputs(images[i:i + batch]))[0], axis=1)
               for i in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def train_step(self, images: np.ndarray, labels: np.ndarray, lr_factor: float) -> tuple[float, int]:
        """One SGD step on the mean SSE loss; returns (summed SSE, misclassified count)."""
        out, caches = self.forward(self.inputs(images))
        b = len(labels)
        onehot = np.zeros_like(out)
        onehot[np.arange(b), labels] = 1
        diff = out - onehot
        loss = 0.5 * float(np.sum(diff.astype(np.float64) ** 2))
        errors = int(np.sum(np.argmax(out, axis=1) != labels))
        d = diff / np.float32(b)
        grads = [None] * len(self.weights)
        for i in reversed(range(len(self.weights))):
            layer, w = self.config.layers[i], self.weights[i]
            a_in, cols, p, idx = caches[i]
            if not layer.last:
                d = d * (p > 0)
            if layer.pool:
                d = maxpool2_backward(d, idx)
            if layer.kind == "fc":
                grads[i] = d.T @ cols
                if i:
                    d = (d @ w).reshape(a_in.shape)
            else:
                o = layer.out_channels
                rows = d.transpose(0, 2, 3, 1).reshape(-1, o)
                grads[i] = (rows.T @ cols).reshape(w.shape)
                if i:
                    d = col2im(rows @ w.reshape(o, -1), a_in.shape, layer.kernel, layer.padding)
        lr = np.float32(self.base_lr * lr_factor)
        for w, v, g in zip(self.weights, self.velocity, grads):
            v *= np.float32(MOMENTUM)
            v += g
            w -= lr * v
        return loss, errors
