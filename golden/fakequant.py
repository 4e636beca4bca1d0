"""An independent float64 "fake-quant" formulation of one WAGE training step (spec §2–§4).

This is the cross-check for :mod:`golden.model`: every quantity is held in *real-valued units*, as in
the authors' TensorFlow code, and every quantiser is written straight from the paper/code formula:

* σ(k) = 2^(1−k);  C(x, k) = clip(x, −1+σ, 1−σ);  Q(x, k) = RNE(x/σ)·σ  (``np.round`` is half to even);
* Shift(x) = 2^round(log2 x), with ``np.log2`` in float64 (spec §2.3: the reference's float Shift);
* Q_W: w = Q(C(W, kW), kW)/α;  Q_A: a = Q(C(x, kA), kA), gradient mask −1+σ ≤ x ≤ 1−σ;
* Q_E: e_q = Q(C(e/Shift(max|e|), kE), kE), scale discarded (all-zero tensor → zeros);
* Q_G: g_s = η·g/Shift(max|g|), N = sgn(g_s)(⌊|g_s|⌋ + [u < f_r]), f_r = ⌊f·2^r⌋/2^r, ΔW = N·σ(kG);
* W ← clip(W − ΔW, ±(1−σ(kW)))  (±(1−σ(kG)) when ``weight_clip == "kG"``).

Nothing here imports :mod:`golden.quant` or :mod:`golden.model`. Shared pieces are only the
configuration (shapes, α), the layout helpers of :mod:`golden.ops`, the exact input table and the
counter-based draws of :mod:`golden.prng` (u = R/2^r).

All values are dyadic rationals far inside float64's exact range, so the float path is exact except
for ``np.log2`` in Shift, which can round the other way when max|x| lies extremely close to √2·2^n.

:func:`fakequant_step` records a trace with the tensor names of :func:`golden.model.train_step`, in
real units (``x``, ``y``; per layer ``A_in``, ``Wq``, ``P``, ``P_pool``, ``pool_idx``, ``A``,
``mask_relu``, ``mask_sat``, ``D``, ``n_E``, ``E_q``, ``E``, ``G``, ``q_G``, ``R``, ``dW``,
``W_before``, ``W_after``) plus ``G_dir`` = g/Shift(max|g|), ``G_s`` = η·g/Shift(max|g|) and ``U``.
Exponents are real-unit exponents: ``n_E`` = log2 Shift(max|e|) and ``q_G`` = log2(Shift(max|g|)/η)
(not recorded when the tensor is all zero, as in golden.model).
"""

from __future__ import annotations

import numpy as np

from .config import LayerSpec, WageConfig
from .ops import col2im, im2col, maxpool2, maxpool2_backward
from .model import layer_draws

__all__ = [
    "sigma", "clip_k", "quant_k", "shift", "q_weight", "q_activation", "q_error", "q_gradient",
    "input_real", "fakequant_step",
]


# ---- quantisers in real units ------------------------------------------------------------------

def sigma(k: int) -> float:
    """σ(k) = 2^(1−k)."""
    return 2.0 ** (1 - k)


def clip_k(x, k: int) -> np.ndarray:
    """C(x, k) = clip(x, −1+σ(k), 1−σ(k))."""
    s = sigma(k)
    return np.clip(x, -1.0 + s, 1.0 - s)


def quant_k(x, k: int) -> np.ndarray:
    """Q(x, k) = RNE(x/σ(k))·σ(k) (``np.round`` rounds half to even, like ``tf.round``)."""
    s = sigma(k)
    return np.round(np.asarray(x, dtype=np.float64) / s) * s


def shift(x) -> float:
    """Shift(x) = 2^round(log2 x) for x > 0, computed in float64 as the reference does."""
    return float(2.0 ** np.round(np.log2(np.float64(x))))


def q_weight(w_real, kW: int, alpha: float) -> np.ndarray:
    """Q_W forward: w = Q(C(W, kW), kW)/α."""
    return quant_k(clip_k(w_real, kW), kW) / alpha


def q_activation(x, kA: int):
    """Q_A forward: (Q(C(x, kA), kA), gradient mask −1+σ ≤ x ≤ 1−σ on the unquantised x)."""
    s = sigma(kA)
    mask = (x >= -1.0 + s) & (x <= 1.0 - s)
    return quant_k(clip_k(x, kA), kA), mask


def q_error(e, kE: int):
    """Q_E backward: Q(C(e/Shift(max|e|), kE), kE); returns (e_q, Shift value or None if all zero)."""
    e = np.asarray(e, dtype=np.float64)
    m = float(np.max(np.abs(e))) if e.size else 0.0
    if m == 0.0:
        return np.zeros_like(e), None
    sh = shift(m)
    return quant_k(clip_k(e / sh, kE), kE), sh


def q_gradient(g, eta: float, kG: int, u, sr_bits: int):
    """Q_G: ΔW = N·σ(kG), N = sgn(g_s)(⌊|g_s|⌋ + [u < f_r]), g_s = η·g/Shift(max|g|).

    f = |g_s| − ⌊|g_s|⌋ is truncated to r = ``sr_bits`` bits: f_r = ⌊f·2^r⌋/2^r (spec §8.5).
    Returns (ΔW, g_s, Shift value or None). An all-zero g gives ΔW = 0 (no update).
    """
    g = np.asarray(g, dtype=np.float64)
    m = float(np.max(np.abs(g))) if g.size else 0.0
    if m == 0.0:
        return np.zeros_like(g), np.zeros_like(g), None
    sh = shift(m)
    g_s = eta * g / sh
    mag = np.abs(g_s)
    whole = np.floor(mag)
    f = mag - whole
    scale = 2.0 ** sr_bits
    f_r = np.floor(f * scale) / scale
    n = np.sign(g_s) * (whole + (np.asarray(u).reshape(g.shape) < f_r))
    return n * sigma(kG), g_s, sh


def input_real(config: WageConfig, images: np.ndarray) -> np.ndarray:
    """uint8 pixels → real input activations: input_table()[p]·2^−(kA−1) (the shared exact table)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.shape[1:] != config.input_shape:
        raise ValueError(f"images have shape {images.shape[1:]} per sample, the network expects {config.input_shape}")
    return config.input_table()[images].astype(np.float64) * sigma(config.kA)


# ---- layer products in real units ----------------------------------------------------------------

def _product(layer: LayerSpec, a: np.ndarray, w: np.ndarray):
    """y = a ∗ w (conv: stride 1, zero padding; fc: matmul); returns (y, conv patches or None)."""
    b = a.shape[0]
    if layer.kind == "fc":
        return a.reshape(b, -1) @ w.T, None
    o, _, ho, wo = (layer.out_channels, *layer.product_shape)
    cols = im2col(a, layer.kernel, layer.padding)
    y = cols @ w.reshape(o, -1).T
    return y.reshape(b, ho, wo, o).transpose(0, 3, 1, 2), cols


def _backprop(layer: LayerSpec, e: np.ndarray, w: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """dL/d(layer input) = e ∗ wᵀ (transposed conv / matmul with the forward weights w)."""
    b = e.shape[0]
    if layer.kind == "fc":
        return (e @ w).reshape((b, *in_shape))
    o = layer.out_channels
    cols = e.transpose(0, 2, 3, 1).reshape(-1, o) @ w.reshape(o, -1)
    return col2im(cols, (b, *in_shape), layer.kernel, layer.padding)


def _weight_grad(layer: LayerSpec, a_in: np.ndarray, cols, e: np.ndarray) -> np.ndarray:
    """g = Σ_{batch, positions} a_in·e (straight-through: no 1/α, no clip mask on W)."""
    if layer.kind == "fc":
        return e.T @ a_in.reshape(e.shape[0], -1)
    o = layer.out_channels
    return (e.transpose(1, 0, 2, 3).reshape(o, -1) @ cols).reshape(layer.weight_shape)


def _exp(x):
    return None if x is None else int(np.round(np.log2(x)))


# ---- one training step -----------------------------------------------------------------------------

def fakequant_step(config: WageConfig, weights_real: list[np.ndarray], images: np.ndarray, labels: np.ndarray,
                   step: int, eta: float) -> tuple[list[np.ndarray], dict]:
    """One WAGE step in float64 real units; returns (new real weights W, trace dict in real units).

    ``weights_real`` are the real stored weights W (for the integer model: Ws·2^−(kG−1)); ``eta`` is η.
    The trace uses the keys ``s{step}/...`` of :func:`golden.model.train_step`.
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (len(images),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= config.classes:
        raise ValueError(f"labels must be {len(images)} integers in 0..{config.classes - 1}")
    kW, kA, kG, kE = config.kW, config.kA, config.kG, config.kE
    s = f"s{step}"
    trace: dict = {f"{s}/x": np.asarray(images).copy(), f"{s}/y": labels.copy()}

    def rec(i, **tensors):
        for name, value in tensors.items():       # like golden.model: absent tensors are not recorded
            if value is not None:
                trace[f"{s}/l{i}/{name}"] = value if np.isscalar(value) else np.asarray(value).copy()

    # Forward: conv/fc → [max-pool] → (hidden) ReLU → Q_E (identity) → Q_A; last: Q_A (no ReLU) or raw.
    a = input_real(config, images)
    fw = []
    for layer, w_real in zip(config.layers, weights_real):
        alpha = 2.0 ** layer.alpha_log2
        w = q_weight(np.asarray(w_real, dtype=np.float64), kW, alpha)
        y, cols = _product(layer, a, w)
        y_pool, pool_idx = maxpool2(y) if layer.pool else (None, None)
        pre = y_pool if layer.pool else y
        if not layer.last:
            mask_relu = pre > 0
            a_out, mask_sat = q_activation(np.maximum(pre, 0.0), kA)
        elif config.output_quantize:
            mask_relu = None
            a_out, mask_sat = q_activation(pre, kA)
        else:
            mask_relu = mask_sat = a_out = None
        fw.append(dict(a_in=a, w=w, y=y, y_pool=y_pool, pool_idx=pool_idx, a_out=a_out,
                       mask_relu=mask_relu, mask_sat=mask_sat, cols=cols))
        a = a_out

    # Loss SSE: dL/dout = out − onehot (out = Q_A output, or the raw y of the last layer).
    last = fw[-1]
    out = last["a_out"] if config.output_quantize else last["y"]
    onehot = np.zeros(out.shape)
    onehot[np.arange(len(labels)), labels] = 1.0
    d = out - onehot

    n_layers = len(config.layers)
    errors = [None] * n_layers
    for i in reversed(range(n_layers)):
        layer, c = config.layers[i], fw[i]
        if layer.last:
            e_q, sh = q_error(d, kE)                                  # Q_E first ...
            e = e_q * c["mask_sat"] if config.output_quantize else e_q   # ... then Q_A's clip mask
        else:
            e_q, sh = q_error(d * c["mask_sat"], kE)                  # Q_A backward, then Q_E
            e = e_q * c["mask_relu"]                                  # ReLU backward (strict >)
            if layer.pool:
                e = maxpool2_backward(e, c["pool_idx"])
        errors[i] = e
        rec(i, A_in=c["a_in"], Wq=c["w"], P=c["y"], P_pool=c["y_pool"], pool_idx=c["pool_idx"], A=c["a_out"],
            mask_relu=c["mask_relu"], mask_sat=c["mask_sat"], D=d, n_E=_exp(sh), E_q=e_q, E=e)
        if i > 0:
            d = _backprop(layer, e, c["w"], config.layers[i - 1].out_shape)

    # Gradients from the current weights, Q_G with the counter-based draws, update and clip.
    w_clip = 1.0 - sigma(kW if config.weight_clip == "kW" else kG)
    r = config.sr_bits
    new_weights = []
    for i, (layer, c, w_real) in enumerate(zip(config.layers, fw, weights_real)):
        w_real = np.asarray(w_real, dtype=np.float64)
        g = _weight_grad(layer, c["a_in"], c["cols"], errors[i])
        draws = layer_draws(config, step, i)
        u = draws.astype(np.float64) / 2.0 ** r
        dw, g_s, sh = q_gradient(g, eta, kG, u, r)
        w_new = np.clip(w_real - dw, -w_clip, w_clip)
        rec(i, G=g, G_dir=None if sh is None else g / sh, G_s=g_s, q_G=None if sh is None else _exp(sh / eta),
            R=draws, U=u, dW=dw, W_before=w_real, W_after=w_new)
        new_weights.append(w_new)
    return new_weights, trace
