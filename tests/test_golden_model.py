"""The integer WAGE network: determinism, zero tensors, exact sums, learning, masks and traces."""

import numpy as np
import pytest

from golden import model
from golden.config import WageConfig
from golden.data import load_dataset
from golden.ops import exact_matmul
from golden.quant import quantize_activation, forward_weights

SMALL_CNN = dict(net="8C5-MP2-16C3p-MP2-32FC-10", input_shape=(1, 28, 28), batch_size=16)


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("embedded")


def run_steps(config, images, labels, steps, eta_log2=3):
    w = model.init_weights(config)
    b = config.batch_size
    for s in range(steps):
        w, _ = model.train_step(config, w, images[s * b:(s + 1) * b], labels[s * b:(s + 1) * b], s, eta_log2)
    return w


@pytest.mark.parametrize("kwargs", [dict(net="mlp", batch_size=32), SMALL_CNN])
def test_same_seed_gives_identical_weights(embedded, kwargs):
    cfg = WageConfig(seed=7, **kwargs)
    a = run_steps(cfg, embedded.train_images, embedded.train_labels, 6)
    b = run_steps(cfg, embedded.train_images, embedded.train_labels, 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = run_steps(cfg.replace(seed=8), embedded.train_images, embedded.train_labels, 6)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_initial_weights_follow_the_spec():
    cfg = WageConfig(net="lenet5", seed=3)
    for layer, w in zip(cfg.layers, model.init_weights(cfg)):
        assert w.shape == layer.weight_shape
        assert set(np.unique(w)) <= {-64, 0, 64}          # Q(U(-0.75, 0.75), 2) at the σ(kG) grid
        share = [np.mean(w == v) for v in (-64, 0, 64)]
        assert all(abs(s - 1 / 3) < 0.05 for s in share), share


def test_all_zero_input_gives_no_first_layer_update():
    cfg = WageConfig(net="mlp", batch_size=8)
    w = model.init_weights(cfg)
    images = np.zeros((8, 1, 28, 28), np.uint8)           # x/256 maps pixel 0 to code 0
    trace = {}
    new, stats = model.train_step(cfg, w, images, np.arange(8) % 10, 0, 3, trace=trace)
    assert not trace["s0/l0/P"].any() and not trace["s0/l0/A"].any()
    assert stats.updated == [False, False]                # A = 0 everywhere → G = 0 in both layers
    assert "s0/l0/q_G" not in trace and not trace["s0/l0/dW"].any()
    assert all(np.array_equal(a, b) for a, b in zip(w, new))
    assert trace["s0/l1/D"].any()                         # the loss error itself is not zero


def test_products_are_exact_where_float32_is_not():
    rng = np.random.default_rng(0)
    a = rng.choice([-127, 127], size=(64, 4096)).astype(np.int64)
    b = rng.choice([-127, 127], size=(4096, 8)).astype(np.int64)
    a[:, :2048] = 127
    b[:2048, :] = 127
    exact = a @ b                                         # int64 reference
    assert np.array_equal(exact_matmul(a, b), exact)
    f32 = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    assert np.abs(exact).max() > 2 ** 24                  # the sums exceed float32's exact range
    assert not np.array_equal(f32, exact)                 # so float32 alone would have been wrong


def test_trace_is_internally_consistent(embedded):
    cfg = WageConfig(seed=5, **SMALL_CNN)
    trace = {}
    w = model.init_weights(cfg)
    for s in range(2):
        w, _ = model.train_step(cfg, w, embedded.train_images[16 * s:16 * (s + 1)],
                                embedded.train_labels[16 * s:16 * (s + 1)], s, 3, trace=trace)
    for layer in cfg.layers:
        p = f"s1/l{layer.index}"
        assert np.array_equal(trace[f"s0/l{layer.index}/W_after"], trace[f"{p}/W_before"])
        assert np.array_equal(trace[f"{p}/Wq"], forward_weights(trace[f"{p}/W_before"], cfg.kW, cfg.kG))
        pre = trace[f"{p}/P_pool"] if layer.pool else trace[f"{p}/P"]
        a, relu, sat = quantize_activation(pre, cfg.act_shift(layer), cfg.kA, relu=not layer.last)
        assert np.array_equal(a, trace[f"{p}/A"]) and np.array_equal(sat, trace[f"{p}/mask_sat"])
        if not layer.last:
            assert np.array_equal(trace[f"s1/l{layer.index + 1}/A_in"].reshape(a.shape), a)
        assert np.array_equal(trace[f"{p}/W_after"],
                              np.clip(trace[f"{p}/W_before"] - trace[f"{p}/dW"], -cfg.w_clip, cfg.w_clip))
    assert np.array_equal(w[0], trace["s1/l0/W_after"])


def test_error_tensor_obeys_masks(embedded):
    cfg = WageConfig(seed=2, **SMALL_CNN)
    trace = {}
    model.train_step(cfg, model.init_weights(cfg), embedded.train_images[:16], embedded.train_labels[:16], 0, 3, trace)
    e, e_q, relu = trace["s0/l0/E"], trace["s0/l0/E_q"], trace["s0/l0/mask_relu"]
    assert np.abs(e).max() <= 127 and np.abs(e_q).max() <= 127
    # pooled layer: at most one nonzero per 2×2 window, equal to the masked pooled error
    b, c, h, w = e.shape
    windows = e.reshape(b, c, h // 2, 2, w // 2, 2)
    assert ((windows != 0).sum(axis=(3, 5)) <= 1).all()
    assert np.array_equal(windows.sum(axis=(3, 5)), e_q * relu)


def test_mlp_learns_on_embedded_data(embedded):
    cfg = WageConfig(net="mlp", batch_size=64, seed=0, lr_schedule=((0, 8), (2, 1)))
    w = model.init_weights(cfg)
    step = 0
    for epoch in range(3):
        for i in range(len(embedded.train_images) // 64):
            w, _ = model.train_step(cfg, w, embedded.train_images[i * 64:(i + 1) * 64],
                                    embedded.train_labels[i * 64:(i + 1) * 64], step, cfg.eta_log2(epoch))
            step += 1
    accuracy = np.mean(model.predict(cfg, w, embedded.test_images) == embedded.test_labels)
    assert accuracy > 0.70, accuracy


def test_bad_inputs_are_named():
    cfg = WageConfig(net="mlp", batch_size=4)
    w = model.init_weights(cfg)
    with pytest.raises(TypeError, match="uint8"):
        model.train_step(cfg, w, np.zeros((4, 1, 28, 28), np.float32), np.zeros(4, int), 0, 3)
    with pytest.raises(ValueError, match=r"\(1, 32, 32\)"):
        model.train_step(cfg, w, np.zeros((4, 1, 32, 32), np.uint8), np.zeros(4, int), 0, 3)
    with pytest.raises(ValueError, match="labels"):
        model.train_step(cfg, w, np.zeros((4, 1, 28, 28), np.uint8), np.array([0, 1, 2, 10]), 0, 3)


def test_out_of_range_or_misshapen_weights_are_refused():
    cfg = WageConfig(net="mlp", batch_size=4)
    w = model.init_weights(cfg)
    codes = model.input_codes(cfg, np.zeros((4, 1, 28, 28), np.uint8))
    bad = [x.copy() for x in w]
    bad[0][0, 0] = -65
    with pytest.raises(ValueError, match="-65 is outside ±64"):
        model.forward(cfg, bad, codes)
    with pytest.raises(ValueError, match="shape"):
        model.forward(cfg, [w[0][:5], w[1]], codes)
    with pytest.raises(ValueError, match="1 weight tensors"):
        model.forward(cfg, w[:1], codes)


def test_draws_run_channels_last_over_the_weights():
    """SR draw i belongs to the i-th weight in channels-last order (conv OHWI; fc after conv NHWC flatten)."""
    from golden.prng import sr_draws
    cfg = WageConfig(**SMALL_CNN, seed=5)
    step = 3
    fc2 = cfg.layers[2]
    for i in (0, 1):
        layer = cfg.layers[i]
        o, c, kh, kw = layer.weight_shape
        flat = sr_draws(cfg.seed, step, i, layer.weights, cfg.sr_bits)
        r = model.layer_draws(cfg, step, i)
        for oo, cc, ii, jj in [(0, 0, 0, 0), (o - 1, c - 1, kh - 1, kw - 1), (1, c // 2, 1, 2), (o // 2, c - 1, 0, kw - 1)]:
            assert r[oo, cc, ii, jj] == flat[((oo * kh + ii) * kw + jj) * c + cc]
    c, h, w = cfg.layers[1].out_shape
    flat = sr_draws(cfg.seed, step, 2, fc2.weights, cfg.sr_bits)
    r = model.layer_draws(cfg, step, 2)
    for oo, cc, y, x in [(0, 0, 0, 0), (31, c - 1, h - 1, w - 1), (7, 3, 1, 2)]:
        assert r[oo, (cc * h + y) * w + x] == flat[((oo * h + y) * w + x) * c + cc]
    # A plain fc after fc, and the MLP on one-channel images: row-major order of weight_shape.
    for cfg_, i in ((cfg, 3), (WageConfig(net="mlp", seed=5), 0), (WageConfig(net="mlp", seed=5), 1)):
        layer = cfg_.layers[i]
        np.testing.assert_array_equal(model.layer_draws(cfg_, step, i).reshape(-1),
                                      sr_draws(cfg_.seed, step, i, layer.weights, cfg_.sr_bits))
