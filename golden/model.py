"""The integer-exact WAGE network: initialisation, forward pass, one training step (spec §8.4).

Every tensor is an int64 array of integer codes with an implicit power-of-two scale:

=============  ==========================================  =====================================
tensor         integer                                     real value
=============  ==========================================  =====================================
``A``          activations, ±(2^(kA−1)−1)                  A·2^−(kA−1)
``Ws``         stored weights, ±w_clip                      Ws·2^−(kG−1)
``Wq``         forward weights, ±(2^(kW−1)−1)              Wq·2^−(kW−1)/α
``P``          product sums Σ A·Wq                          P·2^−(kA−1+kW−1)/α
``E``          errors, ±(2^(kE−1)−1)                       scale discarded by Q_E
``G``          gradient sums Σ A·E                          scale discarded by Q_G
``dW``         weight increments                            dW·2^−(kG−1)
=============  ==========================================  =====================================

A training step optionally records every named tensor into a ``trace`` dict; the names are the
contract hardware testbenches check against (see :mod:`golden.trace`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .config import LayerSpec, WageConfig
from .ops import col2im, exact_dtype, exact_matmul, im2col, maxpool2, maxpool2_backward
from .prng import sr_draws
from .quant import (forward_weights, quantize_activation, quantize_error, quantize_gradient,
                    update_weights)

__all__ = ["init_weights", "input_codes", "forward", "train_step", "predict", "layer_draws", "StepStats",
           "LayerCache"]


def init_weights(config: WageConfig) -> list[np.ndarray]:
    """Initial stored weights (spec §3): W ~ U(−L', L'), L' = max(√(3/n), 1.5·σ(kW)), then Q(W, kW).

    Drawn once on the host from NumPy's PCG64 seeded with ``config.seed``; the result is integer codes
    at the σ(kG) grid, clipped to the stored range (the reference clips before every use).
    """
    rng = np.random.Generator(np.random.PCG64(config.seed))
    weights = []
    for layer in config.layers:
        n = layer.fan_in
        limit = np.sqrt((3.0 if config.init_limit == "sqrt3" else 6.0) / n)
        limit = max(limit, 1.5 * config.sigma(config.kW))
        w = rng.uniform(-limit, limit, size=layer.weight_shape)
        codes = np.rint(w * 2 ** (config.kW - 1)).astype(np.int64)   # np.rint: half to even, like tf.round
        ws = codes << config.w_shift
        weights.append(np.clip(ws, -config.w_clip, config.w_clip))
    return weights


def input_codes(config: WageConfig, images: np.ndarray) -> np.ndarray:
    """uint8 images (B, C, H, W) → input activation codes via the exact 256-entry table."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.shape[1:] != config.input_shape:
        raise ValueError(f"images have shape {images.shape[1:]} per sample, the network expects {config.input_shape}")
    return config.input_table()[images]


@dataclass
class LayerCache:
    """What the forward pass keeps for the backward pass of one layer."""
    a_in: np.ndarray              # input activations (B, ...) as the layer consumes them
    wq: np.ndarray                # forward weight codes
    p: np.ndarray                 # product sums (B, O[, Ho, Wo])
    p_pool: np.ndarray | None     # pooled sums
    pool_idx: np.ndarray | None   # arg-max index within each 2×2 window
    a_out: np.ndarray | None      # quantised activations (None for a raw output layer)
    mask_relu: np.ndarray | None
    mask_sat: np.ndarray | None
    cols: np.ndarray | None       # conv patches of a_in (float32), reused by the gradient


def _product(layer: LayerSpec, a_in: np.ndarray, wq: np.ndarray, a_max: int, w_max: int):
    """P = A ∗ Wq for one layer; returns (P, conv patches or None)."""
    b = a_in.shape[0]
    if layer.kind == "fc":
        return exact_matmul(a_in.reshape(b, -1), wq.T, a_max, w_max), None
    o, _, ho, wo = (layer.out_channels, *layer.product_shape)
    cols = im2col(a_in.astype(np.float32), layer.kernel, layer.padding)
    p = exact_matmul(cols, wq.reshape(o, -1).T, a_max, w_max)
    return p.reshape(b, ho, wo, o).transpose(0, 3, 1, 2), cols


def forward_weight_table(config: WageConfig) -> np.ndarray:
    """Wq for every stored code −w_clip..w_clip (index Ws + w_clip): one gather per use, same primitive."""
    codes = np.arange(-config.w_clip, config.w_clip + 1)
    return forward_weights(codes, config.kW, config.kG).astype(np.int8 if config.kW <= 8 else np.int16)


def forward(config: WageConfig, weights: list[np.ndarray], a_in: np.ndarray) -> list[LayerCache]:
    """The integer forward pass from input codes; returns one cache per layer."""
    caches = []
    a = a_in
    in_max = config.a_max
    table = forward_weight_table(config)
    if len(weights) != len(config.layers):
        raise ValueError(f"{len(weights)} weight tensors given, the network has {len(config.layers)} layers")
    for layer, ws in zip(config.layers, weights):
        if ws.shape != layer.weight_shape:
            raise ValueError(f"layer {layer.index}: weights have shape {ws.shape}, expected {layer.weight_shape}")
        lo, hi = int(ws.min()), int(ws.max())
        if lo < -config.w_clip or hi > config.w_clip:
            raise ValueError(f"layer {layer.index}: stored weight {lo if lo < -config.w_clip else hi} is outside "
                             f"±{config.w_clip}")
        wq = table[ws + config.w_clip]
        p, cols = _product(layer, a, wq, in_max, config.wq_max)
        p_pool, pool_idx = maxpool2(p) if layer.pool else (None, None)
        pre = p_pool if layer.pool else p
        shift = config.act_shift(layer)
        if not layer.last:
            a_out, mask_relu, mask_sat = quantize_activation(pre, shift, config.kA, relu=True)
        elif config.output_quantize:
            a_out, mask_relu, mask_sat = quantize_activation(pre, shift, config.kA, relu=False)
        else:
            a_out = mask_relu = mask_sat = None
        caches.append(LayerCache(a, wq, p, p_pool, pool_idx, a_out, mask_relu, mask_sat, cols))
        a = a_out
    return caches


def output_logits(config: WageConfig, caches: list[LayerCache]) -> np.ndarray:
    """The network's integer outputs, at the scale of the last layer's sums."""
    return caches[-1].p


def predict(config: WageConfig, weights: list[np.ndarray], images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Class predictions: arg-max of the last layer's integer sums (ties to the lowest class)."""
    out = []
    for i in range(0, len(images), batch):
        caches = forward(config, weights, input_codes(config, images[i:i + batch]))
        out.append(np.argmax(caches[-1].p, axis=1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def loss_error(config: WageConfig, cache: LayerCache, labels: np.ndarray) -> np.ndarray:
    """dL/dout of the SSE loss ½·Σ(out − onehot)² in integers at the output's scale (spec §4.3)."""
    onehot = np.zeros(cache.p.shape, dtype=np.int64)
    onehot[np.arange(len(labels)), labels] = 1
    if config.output_quantize:
        return cache.a_out - (onehot << (config.kA - 1))
    last = config.layers[-1]
    return cache.p - (onehot << (config.kA - 1 + config.act_shift(last)))


def sse_loss(config: WageConfig, cache: LayerCache, labels: np.ndarray) -> float:
    """The SSE loss value summed over the batch (logging only; the one float in training)."""
    d = loss_error(config, cache, labels)
    scale = 2.0 ** (config.kA - 1) if config.output_quantize else 2.0 ** (config.kA - 1 + config.act_shift(config.layers[-1]))
    return 0.5 * float(np.sum((d / scale) ** 2))


def _propagate(layer: LayerSpec, e: np.ndarray, wq: np.ndarray, in_shape: tuple[int, ...], e_max: int, w_max: int):
    """D = E ∗ Wqᵀ: the error sums at this layer's input, shaped like its input activations."""
    b = e.shape[0]
    if layer.kind == "fc":
        return exact_matmul(e, wq, e_max, w_max).reshape((b, *in_shape))
    o = layer.out_channels
    e_rows = e.transpose(0, 2, 3, 1).reshape(-1, o)               # (B·Ho·Wo, O)
    # The sums are bounded by max|E|·max|W|·O·k² (each input position collects at most O·k² terms),
    # so the col2im additions stay exact in the container exact_matmul chose for O terms.
    dtype = exact_dtype(e_max * w_max * o * layer.kernel * layer.kernel)
    cols = np.matmul(e_rows.astype(dtype), wq.reshape(o, -1).astype(dtype))
    d = col2im(cols, (b, *in_shape), layer.kernel, layer.padding)
    return d.astype(np.int64)


def _gradient(layer: LayerSpec, cache: LayerCache, e: np.ndarray, a_max: int, e_max: int) -> np.ndarray:
    """G = Σ_{batch, positions} A_in·E, shaped like the weights."""
    if layer.kind == "fc":
        b = e.shape[0]
        return exact_matmul(e.T, cache.a_in.reshape(b, -1), e_max, a_max)
    o = layer.out_channels
    e_t = e.transpose(1, 0, 2, 3).reshape(o, -1)                  # (O, B·Ho·Wo)
    return exact_matmul(e_t, cache.cols, e_max, a_max).reshape(layer.weight_shape)


def layer_draws(config: WageConfig, step: int, index: int) -> np.ndarray:
    """The stochastic-rounding draws R of layer ``index`` at ``step``, shaped like its weights.

    The draw index runs over the weights in channels-last order (:meth:`WageConfig.draw_layout`),
    so hardware streaming gradients channel-fastest meets consecutive indices.
    """
    layer = config.layers[index]
    shape, axes = config.draw_layout(index)
    r = sr_draws(config.seed, step, index, layer.weights, config.sr_bits)
    return r.reshape(shape).transpose(axes).reshape(layer.weight_shape)


# The draws depend only on (seed, step, layer, index), never on data, so a worker thread computes a
# step's draws while the forward and backward passes run (NumPy releases the GIL in its loops).
_DRAWS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wage-sr-draws")


@dataclass
class StepStats:
    loss: float           # SSE summed over the batch (before the update)
    errors: int           # misclassified samples in the batch (before the update)
    updated: list[bool]   # per layer: False when its gradient was all zero (no update)


def _record(trace: dict | None, prefix: str, **tensors) -> None:
    if trace is None:
        return
    for name, value in tensors.items():
        if value is not None:
            trace[f"{prefix}/{name}"] = np.asarray(value).copy()


def train_step(config: WageConfig, weights: list[np.ndarray], images: np.ndarray, labels: np.ndarray,
               step: int, eta_log2: int, trace: dict | None = None) -> tuple[list[np.ndarray], StepStats]:
    """One WAGE training step on a batch; returns the new stored weights and statistics.

    All gradients come from the current weights before any update (as TF does). ``step`` is the
    global step index that keys the stochastic-rounding draws. When ``trace`` is a dict, every named
    tensor is stored in it as ``s{step}/l{layer}/{name}`` (plus ``s{step}/x`` and ``s{step}/y``).
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= config.classes:
        raise ValueError(f"labels must be {len(images)} integers in 0..{config.classes - 1}")
    draws = [_DRAWS.submit(layer_draws, config, step, i) for i in range(len(config.layers))]
    a_in = input_codes(config, images)
    caches = forward(config, weights, a_in)
    last = caches[-1]
    stats = StepStats(loss=sse_loss(config, last, labels),
                      errors=int(np.sum(np.argmax(last.p, axis=1) != labels)), updated=[])
    s = f"s{step}"
    _record(trace, s, x=images, y=labels)

    # Backward (spec §4.2, §4.3): the error E_l at each layer's product resolution.
    n_layers = len(config.layers)
    errors: list[np.ndarray | None] = [None] * n_layers
    d = loss_error(config, last, labels)
    for i in reversed(range(n_layers)):
        layer, cache = config.layers[i], caches[i]
        if layer.last:
            e_q, n_e = quantize_error(d, config.kE)
            e = e_q * cache.mask_sat if config.output_quantize else e_q   # Q_E first, then Q_A's clip mask
        else:
            d_masked = d * cache.mask_sat                                 # Q_A backward
            e_q, n_e = quantize_error(d_masked, config.kE)                # global max over the whole tensor
            e = e_q * cache.mask_relu                                     # ReLU backward (strict >)
            if layer.pool:
                e = maxpool2_backward(e, cache.pool_idx)
        errors[i] = e
        _record(trace, f"{s}/l{i}", A_in=cache.a_in, Wq=cache.wq, P=cache.p, P_pool=cache.p_pool,
                pool_idx=cache.pool_idx, A=cache.a_out, mask_relu=cache.mask_relu, mask_sat=cache.mask_sat,
                D=d, n_E=n_e, E_q=e_q, E=e)
        if i > 0:
            d = _propagate(layer, e, cache.wq, config.layers[i - 1].out_shape, config.e_max, config.wq_max)

    # Weight gradients from the current weights, then Q_G and the update for every layer.
    new_weights = []
    for i, (layer, cache, ws) in enumerate(zip(config.layers, caches, weights)):
        g = _gradient(layer, cache, errors[i], config.a_max, config.e_max)
        r = draws[i].result()
        dw, q = quantize_gradient(g, eta_log2, r, config.sr_bits)
        ws_new = update_weights(ws, dw, config.w_clip)
        stats.updated.append(q is not None)
        _record(trace, f"{s}/l{i}", G=g, q_G=q, R=r, dW=dw, W_before=ws, W_after=ws_new)
        new_weights.append(ws_new)
    return new_weights, stats
