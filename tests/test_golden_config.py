"""WageConfig (golden/config.py) against the spec's tables (§3, §5) and its validation contract."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from golden import ConfigError, WageConfig
from golden.config import parse_bits


# --------------------------------------------------------------------------------------------
# Defaults and network shapes
# --------------------------------------------------------------------------------------------

def test_defaults_2888_lenet5():
    c = WageConfig()
    assert (c.kW, c.kA, c.kG, c.kE) == (2, 8, 8, 8)
    assert c.net == "lenet5" and c.input_shape == (1, 28, 28)
    assert c.batch_size == 128
    assert [(e, Fraction(eta)) for e, eta in c.lr_schedule] == [(0, 8), (200, 1), (250, Fraction(1, 8))]
    assert c.classes == 10


def test_lenet5_shapes():
    L = WageConfig(net="lenet5").layers
    assert [l.kind for l in L] == ["conv", "conv", "fc", "fc"]
    assert L[0].in_shape == (1, 28, 28) and L[0].product_shape == (32, 24, 24) and L[0].pool
    assert L[0].out_shape == (32, 12, 12)
    assert L[1].in_shape == (32, 12, 12) and L[1].product_shape == (64, 8, 8) and L[1].pool
    assert L[1].out_shape == (64, 4, 4)
    assert L[2].in_shape == (1024,) and L[2].out_channels == 512 and not L[2].pool
    assert L[3].in_shape == (512,) and L[3].out_channels == 10 and L[3].last
    assert [l.last for l in L] == [False, False, False, True]
    assert [l.fan_in for l in L] == [25, 800, 1024, 512]
    # parameter counts from the spec §5.1 (52,000 conv + 529,408 FC)
    assert L[0].weights + L[1].weights == 52000 and L[2].weights + L[3].weights == 529408


def test_vgg7_shapes():
    L = WageConfig(net="vgg7").layers
    assert [l.fan_in for l in L] == [27, 1152, 1152, 2304, 2304, 4608, 8192, 1024]
    assert [l.pool for l in L] == [False, True, False, True, False, True, False, False]
    assert L[5].out_shape == (512, 4, 4) and L[6].in_shape == (8192,)
    assert all(l.padding == 1 for l in L[:6])
    assert sum(l.weights for l in L[:6]) == 4574592 and sum(l.weights for l in L[6:]) == 8398848


def test_mlp_shapes():
    L = WageConfig(net="mlp").layers
    assert [(l.kind, l.in_shape, l.out_channels) for l in L] == [("fc", (784,), 256), ("fc", (256,), 10)]


@pytest.mark.parametrize("net,init,alphas", [
    ("lenet5", "sqrt3", [1, 4, 4, 3]),
    ("vgg7", "sqrt3", [1, 4, 4, 4, 4, 5, 5, 4]),
    ("lenet5", "sqrt6", [1, 3, 3, 3]),
    ("vgg7", "sqrt6", [1, 3, 3, 4, 4, 4, 5, 3]),
])
def test_alpha_table(net, init, alphas):
    """Spec §3 table: α per layer, log2 (left column √(3/n), right column √(6/n))."""
    c = WageConfig(net=net, init_limit=init)
    assert [l.alpha_log2 for l in c.layers] == alphas
    # act_shift r_l = kW − 1 + log2 α (spec §8.2: VGG-7 r = 2, 5, 5, 5, 5, 6, 6, 5)
    assert [c.act_shift(l) for l in c.layers] == [1 + a for a in alphas]


def test_act_shift_other_kw():
    c = WageConfig(kW=4, kG=8)
    assert [c.act_shift(l) for l in c.layers] == [3 + l.alpha_log2 for l in c.layers]


# --------------------------------------------------------------------------------------------
# JSON round trip
# --------------------------------------------------------------------------------------------

CONFIGS = [
    dict(),
    dict(net="vgg7", init_limit="sqrt6", weight_clip="kG", input_scale="x/127.5-1", seed=2**32 - 1),
    dict(kW=4, kA=6, kG=10, kE=12, net="mlp", batch_size=7, lr_schedule=((0, 0.5), (3, 2**-16), (9, 2**16)),
         output_quantize=False, sr_bits=24),
    dict(net="2x8C3p-MP2-16C3-10", input_shape=(3, 10, 10), input_scale="x/128-1"),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_json_round_trip(kwargs, tmp_path):
    c = WageConfig(**kwargs)
    assert WageConfig.from_json(c.to_json()) == c
    assert WageConfig.from_json(c.to_json(indent=None)) == c
    path = tmp_path / "cfg.json"
    c.save(path)
    d = WageConfig.load(path)
    assert d == c and d.layers == c.layers
    assert json.loads(path.read_text()) == c.to_dict()


# --------------------------------------------------------------------------------------------
# Validation: every bad value raises ConfigError naming it
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,needle", [
    (dict(kW=1), "kW=1"),
    (dict(kA=16), "kA=16"),
    (dict(kG=1), "kG=1"),
    (dict(kE=16), "kE=16"),
    (dict(kW=8, kG=4), "kW=8"),
    (dict(seed=-1), "seed=-1"),
    (dict(seed=2**32), "seed=4294967296"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(lr_schedule=((0, 3),)), "eta=3"),
    (dict(lr_schedule=((0, 0),)), "eta=0"),
    (dict(lr_schedule=((0, 8), (200, 1), (200, 0.125))), "200"),
    (dict(lr_schedule=((0, 8), (200, 1), (100, 0.125))), "100"),
    (dict(lr_schedule=((5, 8),)), "(5, 8)"),
    (dict(init_limit="sqrt2"), "sqrt2"),
    (dict(weight_clip="kX"), "kX"),
    (dict(input_scale="x/255"), "x/255"),
    (dict(net="resnet"), "resnet"),
    (dict(net="32X5-10", input_shape=(1, 28, 28)), "32X5"),
    (dict(net="MP2-10", input_shape=(1, 28, 28)), "MP2-10"),
    (dict(net="32C5-MP2", input_shape=(1, 28, 28)), "32C5-MP2"),
    (dict(net="32C5-10", input_shape=(1, 4, 4)), "5x5"),
    (dict(net="32C5-MP2-10", input_shape=(1, 27, 27)), "23x23"),
])
def test_bad_values_raise(kwargs, needle):
    with pytest.raises(ConfigError) as info:
        WageConfig(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_kW_greater_than_kG_names_both():
    with pytest.raises(ConfigError, match=r"kW=8.*kG=4"):
        WageConfig(kW=8, kG=4)


def test_bits_from_string():
    assert parse_bits("2-8-8-8") == (2, 8, 8, 8)
    assert parse_bits("4-6-10-12") == (4, 6, 10, 12)
    for bad in ("2-8-8", "2-8-8-8-8", "2-8-x-8", ""):
        with pytest.raises(ConfigError) as info:
            parse_bits(bad)
        assert repr(bad) in str(info.value)
    for text, needle in (("1-8-8-8", "kW=1"), ("2-8-16-8", "kG=16")):
        kW, kA, kG, kE = parse_bits(text)
        with pytest.raises(ConfigError, match=needle):
            WageConfig(kW=kW, kA=kA, kG=kG, kE=kE)


def test_unknown_json_key():
    text = json.dumps(dict(WageConfig().to_dict(), bits="2-8-8-8"))
    with pytest.raises(ConfigError, match="bits"):
        WageConfig.from_json(text)


def test_invalid_json():
    with pytest.raises(ConfigError, match="JSON"):
        WageConfig.from_json("{not json")
    with pytest.raises(ConfigError):
        WageConfig.from_json("[1, 2]")


def test_bad_value_in_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(WageConfig().to_dict(), seed=-7)))
    with pytest.raises(ConfigError) as info:
        WageConfig.load(path)
    assert "seed=-7" in str(info.value) and "bad.json" in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        WageConfig.load(path)
    assert "nope.json" in str(info.value)


# --------------------------------------------------------------------------------------------
# Derived values
# --------------------------------------------------------------------------------------------

def test_eta_log2_per_epoch():
    c = WageConfig()
    want = {0: 3, 1: 3, 199: 3, 200: 0, 249: 0, 250: -3, 299: -3, 1000: -3}
    assert {e: c.eta_log2(e) for e in want} == want
    c2 = WageConfig(lr_schedule=((0, 32), (40, 4), (60, 0.5)))
    assert [c2.eta_log2(e) for e in (0, 39, 40, 59, 60, 79)] == [5, 5, 2, 2, -1, -1]


def _clip(v, m=127):
    return max(-m, min(m, v))


@pytest.mark.parametrize("scale,real", [
    ("x/256", lambda p: Fraction(p, 256)),
    ("x/128-1", lambda p: Fraction(p, 128) - 1),
    ("x/127.5-1", lambda p: Fraction(2 * p, 255) - 1),
])
def test_input_table_against_fraction(scale, real):
    t = WageConfig(input_scale=scale).input_table()
    assert t.shape == (256,)
    # Q_A on the real input: clip to ±127/128, then RNE(x·128)
    want = [_clip(round(real(p) * 128)) for p in range(256)]
    assert t.tolist() == want


def test_input_table_closed_forms():
    p = range(256)
    assert WageConfig(input_scale="x/256").input_table().tolist() == [_clip(round(Fraction(v, 2))) for v in p]
    assert WageConfig(input_scale="x/128-1").input_table().tolist() == [_clip(v - 128) for v in p]
    assert WageConfig(input_scale="x/127.5-1").input_table().tolist() == [
        _clip(round(Fraction((2 * v - 255) * 128, 255))) for v in p]
    t = WageConfig(input_scale="x/256").input_table()
    assert t[1] == 0 and t[3] == 2 and t[5] == 2 and t[255] == 127     # ties to even; 127.5 → 128 → 127


@pytest.mark.parametrize("variant,w_clip", [("kW", 64), ("kG", 127)])
def test_w_clip(variant, w_clip):
    assert WageConfig(weight_clip=variant).w_clip == w_clip


def test_w_clip_other_widths():
    # ±(1 − σ(kW)) at scale 2^(kG−1); ±(1 − σ(kG)) is the largest kG-bit code
    assert WageConfig(kW=4, kG=10, weight_clip="kW").w_clip == 7 * 2**6
    assert WageConfig(kW=4, kG=10, weight_clip="kG").w_clip == 511
