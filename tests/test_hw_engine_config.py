"""EngineConfig: its JSON round trip (what ``python -m hw.build --config FILE`` reads)."""

import pytest

from golden.config import WageConfig
from hw.engine.config import EngineConfig, EngineConfigError


def test_json_round_trip(tmp_path):
    config = EngineConfig(WageConfig(net="mlp", batch_size=16, seed=3), lanes=8, data_words=2048,
                          weight_words=8192, external_words=100, target="ecp5")
    assert EngineConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "engine.json")
    loaded = EngineConfig.load(tmp_path / "engine.json")
    assert loaded == config and loaded.fingerprint() == config.fingerprint()


def test_missing_keys_take_defaults():
    assert EngineConfig.from_dict({}) == EngineConfig(WageConfig())
    assert EngineConfig.from_dict({"lanes": 8}).lanes == 8


@pytest.mark.parametrize("text, message", [
    ('{"lanes": 3}', "lanes=3"),
    ('{"lanse": 8}', "unknown engine configuration keys ['lanse']"),
    ('{"wage": {"kW": 99}}', "wage: kW=99"),
    ('{"wage": {"nett": "mlp"}}', "wage: unknown configuration keys ['nett']"),
    ('[1, 2]', "must be a JSON object, got list"),
    ('{"lanes": ', "not valid JSON"),
])
def test_bad_json_names_the_value(text, message):
    with pytest.raises(EngineConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EngineConfig.from_json(text)


def test_unreadable_file_names_it(tmp_path):
    with pytest.raises(EngineConfigError, match="cannot read engine configuration file .*nope.json"):
        EngineConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"lanes": 5}')
    with pytest.raises(EngineConfigError, match=r"bad.json: lanes=5"):
        EngineConfig.load(tmp_path / "bad.json")


def test_slot_digits_are_what_the_compiled_patterns_use():
    """Each slot's convolution walk gets the most (pos, tap) digits any compiled pattern in it has."""
    from hw.engine.compiler import compile_network
    from hw.engine.conv import ConvPattern
    from hw.engine.encoding import SLOTS
    config = EngineConfig.load("benchmarks/configs/engine_lenet5_l8.json")
    assert config.slot_digits == {"a": (5, 3), "b": (3, 3), "out": (3, 3), "aux": (3, 1), "draw": (1, 2)}
    for ins in compile_network(config).instructions:
        for name in SLOTS:
            p = getattr(ins, name)
            if isinstance(p, ConvPattern):
                assert len(p.pos_radix) <= config.slot_digits[name][0]
                assert len(p.tap_radix) <= config.slot_digits[name][1]
    mlp = EngineConfig(WageConfig(net="mlp", input_shape=(1, 28, 28)))
    assert not mlp.has_conv and set(mlp.slot_digits.values()) == {(1, 1)}
