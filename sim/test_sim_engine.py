"""pytest entry points for the engine bench on Verilator (``sim/tb_engine.py``).

* ``test_trains_bit_exact[mlp]`` — the golden MLP (784-256-10, batch 16, 16×16 array) trained for 20
  steps on the embedded Fashion-MNIST subset through the host driver; every stored weight is
  compared with ``golden.model.train_step`` after every step.
* ``test_scoreboard_catches_one_flipped_bit[…]`` — one flipped bit in one read-back weight word makes
  the bench fail, naming the step, layer and word.
* ``test_trains_bit_exact[lenet_style]`` — a LeNet-style convolutional network with reduced channels
  (8C5-MP2-16C5-MP2-32FC-10 on 28×28 images, batch 8, 8×8 array: the first layer on the host-im2col'd
  input, a 5×5 valid convolution, 2×2 max-pool and unpool, fully connected layers after a pooled
  map) for 3 steps, weights compared every step;
  its mutation test flips one bit of a convolution weight word.

The seed is printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``.
"""

from __future__ import annotations

import dataclasses

import pytest

from golden.config import WageConfig
from hw.engine.config import EngineConfig
from hw.engine.engine import Engine
from sim.runner import check_mutation_is_caught, run_cocotb

MLP = EngineConfig(WageConfig(net="mlp", batch_size=16, seed=1), lanes=16, data_words=2048, weight_words=16384,
                   label_words=16)

LENET = EngineConfig(WageConfig(net="8C5-MP2-16C5-MP2-32FC-10", input_shape=(1, 28, 28), batch_size=8, seed=1), lanes=8, data_words=20480,
                     weight_words=2048, label_words=8)


def _params(config: EngineConfig, **kw) -> dict:
    engine = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    engine["wage"] = config.wage.to_json(indent=None)
    return {"engine": engine, **kw}


#: name → (config, build name, steps, the [step, layer, word, bit] the mutation test flips)
TRAINED = {"mlp": (MLP, "engine_mlp16", 20, [0, 1, 37, 5]),
           "lenet_style": (LENET, "engine_lenet8", 3, [0, 1, 17, 3])}


@pytest.mark.parametrize("net", TRAINED)
def test_trains_bit_exact(net):
    config, name, steps, _ = TRAINED[net]
    r = run_cocotb(Engine(config), name=name, test_module="sim.tb_engine", testcase="train_steps",
                   parameters=_params(config, steps=steps, eta_log2=3, stall=0.1, backpressure=0.1), timeout_s=3600)
    assert r.passed == r.tests == 1


@pytest.mark.parametrize("net", TRAINED)
def test_scoreboard_catches_one_flipped_bit(net):
    config, name, _, mutate = TRAINED[net]
    check_mutation_is_caught(Engine(config), name=name, test_module="sim.tb_engine", testcase="train_steps",
                             parameters=_params(config, steps=1, eta_log2=3, mutate=mutate))
