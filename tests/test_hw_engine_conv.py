"""Convolution on the engine (Python level): odometer patterns, compiler and word-level model vs golden."""

import collections
import dataclasses

import numpy as np
import pytest

from golden import model as golden
from golden.config import WageConfig
from golden.data import load_dataset
from hw.engine.compiler import FitError, UnsupportedNetwork
from hw.engine.config import EngineConfig
from hw.engine.conv import (ConvEngineModel, ConvInstruction, ConvOp, ConvPattern, Drive, compile_conv_network)
from hw.engine.isa import AddressPattern, IsaError
from tests.support import train_model_and_golden

LENET = "8C5-MP2-16C3p-MP2-32FC-10"


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("embedded")


def compile_net(net, batch, lanes, shape=(1, 28, 28), seed=11, data_words=1 << 16, fold=True):
    wage = WageConfig(net=net, input_shape=shape, batch_size=batch, seed=seed)
    return wage, compile_conv_network(EngineConfig(wage, lanes=lanes, data_words=data_words, fold_input=fold))


def train_both(wage, program, embedded, steps, eta_log2=3, check=True):
    return train_model_and_golden(ConvEngineModel(program), wage, program, embedded, steps, eta_log2, check)


@pytest.mark.parametrize("net, batch, lanes, fold", [
    (LENET, 6, 4, True),                  # the first layer on the host-im2col'd input (the default)
    (LENET, 6, 4, False),                 # … and as a 5×5 convolution over the 1-channel map
    (LENET, 6, 8, True),
    ("4C3p-8C5-MP2-10", 6, 4, True),      # same conv, no pool, straight into a valid conv; fc unpools
    ("4C3p-8C5-MP2-10", 6, 4, False),
    ("4C3p-4C3-16C3p-MP2-10", 5, 8, False),   # same → valid → same convs without pool; C < L everywhere
])
def test_conv_model_matches_golden_bit_for_bit(embedded, net, batch, lanes, fold):
    wage, program = compile_net(net, batch, lanes, fold=fold)
    assert program.config.folds_input == fold
    train_both(wage, program, embedded, steps=3)


def _replace_conv(program, op, layer, **changes):
    k = next(i for i, ins in enumerate(program.instructions)
             if isinstance(ins, ConvInstruction) and ins.op == op and ins.layer == layer)
    ins = program.instructions[k]
    program.instructions[k] = dataclasses.replace(ins, **changes)
    return ins


def test_a_wrong_tap_stride_is_caught(embedded):
    wage, program = compile_net(LENET, 6, 4)
    a = _replace_conv(program, ConvOp.CONV_FWD, 1).a
    bad = dataclasses.replace(a, tap_addr=(a.tap_addr[0], a.tap_addr[1] + 1, a.tap_addr[2]))
    _replace_conv(program, ConvOp.CONV_FWD, 1, a=bad)
    assert {"A1", "W0", "W1"} <= train_both(wage, program, embedded, steps=1, check=False)


def test_a_wrong_flip_is_caught(embedded):
    """ERR reading E_l at (y + i − pad, x + j − pad) (a correlation, no flip) instead of (y − i + pad, …)."""
    wage, program = compile_net(LENET, 6, 4)
    a = _replace_conv(program, ConvOp.CONV_ERR, 1).a
    pad = wage.layers[1].padding
    flipped = dataclasses.replace(
        a, base=a.base - 2 * pad * (a.tap_addr[0] * -1) - 2 * pad * (a.tap_addr[1] * -1),
        tap_addr=(-a.tap_addr[0], -a.tap_addr[1], a.tap_addr[2]),
        tap_coord=tuple(tuple(-c for c in t) for t in a.tap_coord), coord_base=(-pad, -pad, 0))
    _replace_conv(program, ConvOp.CONV_ERR, 1, a=flipped)
    bad = train_both(wage, program, embedded, steps=1, check=False)
    assert "E0" in bad and "W0" in bad and "E1" not in bad and "W1" not in bad


def test_a_wrong_pool_window_order_is_caught(embedded):
    """Pooling raster-ordered rows (4 neighbours along x) instead of window-major rows."""
    wage, program = compile_net(LENET, 6, 4)
    layer = wage.layers[0]
    a = _replace_conv(program, ConvOp.CONV_FWD, 0).a
    _, ho, wo = layer.product_shape
    h, w = layer.in_shape[1:]
    raster = dataclasses.replace(a, pos_radix=(a.pos_radix[0], ho, wo), pos_addr=(h * w, w, 1),
                                 pos_coord=((0, 0, 1), (1, 0, 0), (0, 1, 0)))
    _replace_conv(program, ConvOp.CONV_FWD, 0, a=raster)
    assert "A0" in train_both(wage, program, embedded, steps=1, check=False)


def test_the_pool_tie_rule_matters(embedded):
    """The test data has windows with tied maxima that receive errors; taking the *last* maximum
    instead of the first breaks the match (so the golden comparison checks the tie rule)."""
    wage, program = compile_net(LENET, 6, 4)
    trace = {}
    golden.train_step(wage, golden.init_weights(wage), embedded.train_images[:6], embedded.train_labels[:6], 0, 3,
                      trace=trace)
    p = trace["s0/l0/P"]
    b, c, h, w = p.shape
    win = p.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    ties = (win == win.max(-1, keepdims=True)).sum(-1) > 1
    assert np.sum(ties & (trace["s0/l0/E_q"] * trace["s0/l0/mask_relu"] != 0)) > 0

    class LastMax(ConvEngineModel):
        def _pool(self, p):
            win = p.reshape(-1, 4, self.lanes)[:, ::-1, :]
            idx = 3 - np.argmax(win, axis=1)
            return np.max(win, axis=1), idx.astype(np.int8)

    engine = LastMax(program)
    weights = golden.init_weights(wage)
    engine.load_weights(weights)
    engine.load_batch(embedded.train_images[:6], embedded.train_labels[:6])
    engine.run_step(0, 3)
    e0 = program.errors[0]
    assert not np.array_equal(e0.unpack(engine.err[e0.base:e0.end]), trace["s0/l0/E"])


def _patterns(program):
    for ins in program.instructions:
        if isinstance(ins, ConvInstruction):
            for name in ("a", "b", "out", "aux", "draw"):
                p = getattr(ins, name)
                if isinstance(p, ConvPattern):
                    yield f"{ins} {name}", p


@pytest.mark.parametrize("net, shape, lanes, batch", [
    ("4C3-MP2-8C3p-MP2-16FC-10", (2, 10, 10), 4, 3),
    ("4C3p-8C3-MP2-10", (1, 6, 6), 8, 5),
])
def test_incremental_form_equals_closed_form(net, shape, lanes, batch):
    """The counters-and-adders walk (odometers with carry strides, T1R save/restore) gives exactly
    the closed-form addresses and validity of every compiled pattern."""
    _, program = compile_net(net, batch, lanes, shape=shape)
    seen = set()
    for name, p in _patterns(program):
        seen.add(name.split()[0])
        address, valid = p.address_array(lanes)
        walked = list(p.addresses(lanes))
        assert len(walked) == p.length, name
        np.testing.assert_array_equal(np.array([a for a, _ in walked]), address.reshape(-1), err_msg=name)
        np.testing.assert_array_equal(np.array([v for _, v in walked]), valid.reshape(-1), err_msg=name)
    assert seen == {"CONV_FWD", "CONV_ERR", "CONV_GRAD"}


def test_carry_strides():
    p = ConvPattern(n1=2, nr=4, pos_drive=Drive.T1R, pos_radix=(2, 2, 2), pos_addr=(100, 10, 1),
                    pos_coord=((0, 0, 1), (1, 0, 0), (0, 1, 0)))
    assert p.carry_strides("pos") == ((100 - 10 - 1, (-1, -1, 1)), (10 - 1, (1, -1, 0)), (1, (0, 1, 0)))
    assert [a for a, _ in p.addresses()] == [0, 1, 10, 11, 100, 101, 110, 111]


def test_window_major_rows():
    """Pooled FWD rows: 4 consecutive rows are one 2×2 window in row-major (dy, dx) order."""
    _, program = compile_net("4C3-MP2-10", 2, 4, shape=(1, 6, 6), fold=False)
    a = program.instructions[0].a
    address, valid = a.address_array(4)
    first_tap = address[0, 0, 0, :]          # tile 0, tap (0, 0, 0): the top-left inputs of window (0, 0)
    assert list(first_tap - a.base) == [0, 1, 6, 7] and valid[0, 0, 0].all()
    # folded: the rows walk the 4×4 product grid of im2col'd positions, ⌈9/4⌉ = 3 words each
    _, program = compile_net("4C3-MP2-10", 2, 4, shape=(1, 6, 6))
    a = program.instructions[0].a
    address, valid = a.address_array(4)
    assert list(address[0, 0, 0, :] - a.base) == [0, 3, 12, 15] and valid[0, 0, 0].all()


@pytest.mark.parametrize("changes, match", [
    (dict(n1=0), "n1=0"),
    (dict(nr=1 << 16), "nr=65536"),
    (dict(base=1 << 24), "base=16777216"),
    (dict(s2=True), "s2=True"),
    (dict(pos_drive=7), "pos_drive=7"),
    (dict(pos_drive=Drive.T1R), "pos_drive=T1R with 0 digits"),
    (dict(tap_drive=Drive.K, tap_radix=(3, 3), tap_addr=(1,), tap_coord=((0, 0, 0),) * 2), "tap_radix, tap_addr"),
    (dict(tap_drive=Drive.K, tap_radix=(3, 0), tap_addr=(1, 1), tap_coord=((0, 0, 0),) * 2), r"tap_radix\[1\]=0"),
    (dict(nk=10, tap_drive=Drive.K, tap_radix=(3, 3), tap_addr=(3, 1), tap_coord=((0, 0, 0),) * 2),
     r"tap_radix=\(3, 3\).*index 9"),
    (dict(tap_drive=Drive.K, tap_radix=(1,), tap_addr=(1,), tap_coord=((0, 0),)), r"tap_coord\[0\]"),
    (dict(tap_drive=Drive.K, tap_radix=(1,) * 7, tap_addr=(1,) * 7, tap_coord=((0, 0, 0),) * 7), "at most 6"),
    (dict(coord_lim=(1, 0, 1)), r"coord_lim\[1\]=0"),
    (dict(coord_base=(0, 1 << 15, 0)), r"coord_base\[1\]=32768"),
    (dict(coord_base=(0, 0)), "coord_base"),
])
def test_pattern_field_checks(changes, match):
    with pytest.raises(IsaError, match=match):
        ConvPattern(**changes)


def test_instruction_field_checks():
    with pytest.raises(IsaError, match="op=1"):
        ConvInstruction(1)
    with pytest.raises(IsaError, match="pool=1 with op CONV_ERR"):
        ConvInstruction(ConvOp.CONV_ERR, pool=1)
    with pytest.raises(IsaError, match="unpool_dx=3, unpool_dy=0"):
        ConvInstruction(ConvOp.CONV_ERR, unpool_dx=3)
    with pytest.raises(IsaError, match="unpool_dx=1, unpool_dy=4 with op CONV_FWD"):
        ConvInstruction(ConvOp.CONV_FWD, unpool_dx=1, unpool_dy=4)
    with pytest.raises(IsaError, match="pattern draw"):
        ConvInstruction(ConvOp.CONV_GRAD, draw=None)
    ConvInstruction(ConvOp.CONV_GRAD, draw=AddressPattern())


def test_fit_and_support_checks():
    with pytest.raises(FitError, match="data_words: the network needs"):
        compile_net(LENET, 6, 4, data_words=4096)
    with pytest.raises(UnsupportedNetwork, match="4 channels, not a multiple of lanes=8"):
        compile_net("4C3-MP2-10", 2, 8)
    with pytest.raises(FitError, match="labels"):
        wage = WageConfig(net=LENET, input_shape=(1, 28, 28), batch_size=6, seed=1)
        compile_conv_network(EngineConfig(wage, lanes=4, data_words=16384, label_words=4))


def test_weights_round_trip():
    wage, program = compile_net(LENET, 6, 8)
    engine = ConvEngineModel(program)
    weights = golden.init_weights(wage)
    engine.load_weights(weights)
    for got, want in zip(engine.read_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_coordinate_limits_stop_where_one_compare_is_exact():
    """A limit above 2^15 would let a negative coordinate (read unsigned) pass the bounds check."""
    from hw.engine.conv import ConvPattern
    ConvPattern(coord_lim=(1 << 15, 1, 1))
    with pytest.raises(IsaError, match=r"coord_lim\[0\]=32769"):
        ConvPattern(coord_lim=((1 << 15) + 1, 1, 1))


# ---- error products in row bands (store-then-quantise) -----------------------------------------------

def compile_banded(net, batch, lanes, shape=(1, 28, 28), seed=11, sum_words=1 << 14, program_words=8192):
    wage = WageConfig(net=net, input_shape=shape, batch_size=batch, seed=seed)
    config = EngineConfig(wage, lanes=lanes, data_words=1 << 16, weight_words=1 << 16, sum_words=sum_words,
                          program_words=program_words)
    return wage, compile_conv_network(config)


def _band_records(program):
    from hw.engine.conv import PART_FINISH
    return [ins for ins in program.instructions if getattr(ins, "part", 0) and ins.part != PART_FINISH]


def test_err_bands_of_lenet5_conv2():
    """Input rows 0..11 of a 5×5 valid convolution onto an 8-row map: kernel rows [max(0, y−7),
    min(4, y)], the four middle rows sharing all five."""
    from hw.engine.conv import _err_bands
    layer = WageConfig(net="lenet5").layers[1]
    assert _err_bands(layer, 12) == [(0, 1, 0, 1), (1, 1, 0, 2), (2, 1, 0, 3), (3, 1, 0, 4), (4, 4, 0, 5),
                                     (8, 1, 1, 4), (9, 1, 2, 3), (10, 1, 3, 2), (11, 1, 4, 1)]


def test_bands_walk_exactly_the_valid_taps():
    """LeNet-5's conv2 error product in bands: the parts together walk every valid beat of the whole
    product in 2/3 of its beats (no kernel row outside the map is walked; the columns still are).
    (1,040 program words hold the 9 row bands' records, 1,032 words, not the column groups'.)"""
    _, banded = compile_banded("lenet5", 16, 16, program_words=1040)
    _, whole = compile_banded("lenet5", 16, 16, sum_words=0)
    parts = _band_records(banded)
    assert len(parts) == 9
    whole_err = next(ins for ins in whole.instructions if isinstance(ins, ConvInstruction)
                     and ins.op == ConvOp.CONV_ERR and ins.layer == 1)
    _, whole_valid = whole_err.a.address_array(16)
    valid = 0
    for ins in parts:
        _, v = ins.a.address_array(16)
        valid += int(v.sum())
    assert valid == int(whole_valid.sum())
    assert sum(p.a.length for p in parts) * 3 == whole_err.a.length * 2


def assert_parts_walk_as_their_closed_form(program, lanes):
    """The incremental walk (the RTL's algorithm) of every pattern of every part equals its closed form."""
    for ins in program.instructions:
        if getattr(ins, "part", 0):
            for name in ("a", "b", "out", "aux"):
                p = getattr(ins, name)
                if isinstance(p, ConvPattern):
                    address, valid = p.address_array(lanes)
                    walked = list(p.addresses(lanes))
                    np.testing.assert_array_equal(np.array([a for a, _ in walked]), address.reshape(-1))
                    np.testing.assert_array_equal(np.array([v for _, v in walked]), valid.reshape(-1))


def test_column_groups_of_lenet5_conv2():
    """Input columns 0..11 of the same convolution: groups of 4 walk kernel columns [0, 3], [0, 4],
    [1, 4]; the sizes that save beats, fewest beats first (a group of 6 walks as many as one of 12)."""
    from hw.engine.conv import _err_column_groups, err_column_group_sizes
    wage = WageConfig(net="lenet5", batch_size=16)
    assert _err_column_groups(wage.layers[1], 12, 4) == [(0, 0, 4), (4, 0, 5), (8, 1, 4)]
    assert _err_column_groups(wage.layers[1], 12, 12) == [(0, 0, 5)]
    assert err_column_group_sizes(wage, 1, 16) == [1, 2, 3, 4, 12]
    # batch 6 at 16 lanes: 6·g is a multiple of 16 for no divisor g of 12, so no part is whole tiles
    assert err_column_group_sizes(WageConfig(net="lenet5", batch_size=6), 1, 16) == []


def test_column_groups_walk_every_valid_beat():
    """With 1,792 program words LeNet-5's conv2 error product runs in 9 row bands × 6 column groups
    of 2 (the smallest groups whose delta records fit): every valid beat of the whole product, in
    40·44 of its 60·60 (kernel row, input row) × (kernel column, input column) pairs."""
    from hw.engine.encoding import encode_program
    _, grouped = compile_banded("lenet5", 16, 16, program_words=1792)
    _, whole = compile_banded("lenet5", 16, 16, sum_words=0)
    parts = _band_records(grouped)
    assert len(parts) == 54
    assert len(encode_program(grouped.instructions)) <= 1792
    whole_err = next(ins for ins in whole.instructions if isinstance(ins, ConvInstruction)
                     and ins.op == ConvOp.CONV_ERR and ins.layer == 1)
    _, whole_valid = whole_err.a.address_array(16)
    assert sum(int(p.a.address_array(16)[1].sum()) for p in parts) == int(whole_valid.sum())
    assert sum(p.a.length for p in parts) * 60 * 60 == whole_err.a.length * 40 * 44


def test_column_grouped_model_matches_golden_bit_for_bit(embedded):
    """A valid 5×5 convolution's error product in 9 row bands × column groups (rows in (group, y,
    b, x) order, the finish record's patterns over all of them): A, E and W equal golden's."""
    wage, program = compile_banded("8C5-MP2-16C5-MP2-32FC-10", 4, 4, program_words=1792)
    parts = _band_records(program)
    assert len(parts) == 9 * 6                    # groups of 2 columns (groups of 1 need over 2,560 words)
    train_both(wage, program, embedded, steps=2)
    assert_parts_walk_as_their_closed_form(program, 4)


def test_several_banded_products_fall_back_one_by_one(embedded):
    """Two stored conv error products whose size lists differ in length ([1, 2, 3, 4, 12] for a 5×5
    kernel on 12 columns, [1, 2, 8] for a 3×3 on 8): the compiler steps through both, the shorter
    list staying at its last size, so a program memory too small for the finer groups still gets
    row bands (the lists once ran in lockstep and stopped at the shorter one, leaving both whole)."""
    net = "8C5-MP2-16C5-16C3-32FC-10"

    def parts(program):
        return collections.Counter(ins.layer for ins in _band_records(program))

    wage, program = compile_banded(net, 4, 4, program_words=1792)
    assert parts(program) == {1: 9 * 3, 2: 5}     # groups of 4 columns; the 3×3 in row bands only
    assert parts(compile_banded(net, 4, 4, program_words=1408)[1]) == {1: 9, 2: 5}
    assert parts(compile_banded(net, 4, 4, program_words=1152)[1]) == {}
    train_both(wage, program, embedded, steps=2)
    assert_parts_walk_as_their_closed_form(program, 4)


def test_banded_model_matches_golden_bit_for_bit(embedded):
    """The word-level model runs the parts and the finish record; A, E and W equal golden's."""
    wage, program = compile_banded(LENET, 6, 4)
    assert _band_records(program)
    train_both(wage, program, embedded, steps=2)


def test_banded_patterns_walk_as_their_closed_form():
    _, program = compile_banded(LENET, 6, 4)
    assert_parts_walk_as_their_closed_form(program, 4)


def test_bands_need_whole_row_tiles_and_room_for_the_records():
    from hw.engine.encoding import encode_program
    _, odd = compile_banded(LENET, 5, 8)                # 5 samples · 12 columns: not whole tiles of 8
    assert not _band_records(odd)
    wage = WageConfig(net=LENET, input_shape=(1, 28, 28), batch_size=6, seed=11)
    _, banded = compile_banded(LENET, 6, 4)
    tight = EngineConfig(wage, lanes=4, data_words=1 << 16, weight_words=1 << 16, sum_words=1 << 14,
                         program_words=len(encode_program(banded.instructions)) - 1)
    assert not _band_records(compile_conv_network(tight))          # whole again, and it fits


# ---- error products staged in batch bands ----------------------------------------------------------

def compile_err_staged(data_words=32, rate=1, program_words=4096):
    """4C3p-MP2-8C3-10 on 8×8 crops at batch 8, 4 lanes: E1 (64 words, 8 per image) spills past
    ``data_words``."""
    wage = WageConfig(net="4C3p-MP2-8C3-10", input_shape=(1, 8, 8), batch_size=8, seed=7)
    config = EngineConfig(wage, lanes=4, data_words=data_words, weight_words=40, label_words=8, external_words=4096,
                          external_weight_words=256, sum_words=16, external_sum_words=4096,
                          external_cycles_per_word=rate, program_words=program_words)
    return wage, compile_conv_network(config)


def cropped(embedded):
    """The embedded images' middle 8×8 (the corners of a 28×28 digit are blank)."""
    import types
    return types.SimpleNamespace(train_images=embedded.train_images[:, :, 10:18, 10:18],
                                 train_labels=embedded.train_labels)


def test_staged_error_bands_model_matches_golden_bit_for_bit(embedded):
    """Conv2's error product with E1 staged in 2 bands of 4 images over E2's dead words: a COPY and
    16 parts per band, the finish record walking (band, group, y, b, x); A, E and W equal golden's,
    and the finish record's band stride one image off is caught."""
    wage, program = compile_err_staged()
    names = [str(ins) for ins in program.instructions]
    first = names.index("CONV_ERR layer 1 part 1") - 1
    assert names[first:first + 35] == ["COPY layer 1", "CONV_ERR layer 1 part 1", *["CONV_ERR layer 1 part"] * 15,
                                       "COPY layer 1", *["CONV_ERR layer 1 part"] * 16, "CONV_ERR layer 1 +unpool finish"]
    assert program.overwritten == ("E2",)
    finish = program.instructions[first + 34]
    assert finish.out.pos_radix == (2, 4, 4, 4, 1) and finish.out.pos_addr[0] == 4 * 16 * 2 * 2
    train_both(wage, program, cropped(embedded), steps=3)
    assert_parts_walk_as_their_closed_form(program, 4)
    off = dataclasses.replace(finish.out, pos_addr=(finish.out.pos_addr[0] - 64, *finish.out.pos_addr[1:]))
    program.instructions[first + 34] = dataclasses.replace(finish, out=off)
    assert "E0" in train_both(wage, program, cropped(embedded), steps=1, check=False)


def test_error_staging_needs_a_spilled_operand():
    """Two COPY records stage E1 for the error product (and two its blocks for the gradient
    product) while it spills; with E1 on chip neither product stages it (conv1's gradient product
    then stages its spilled E0 in batch bands, reading the spilled input in place)."""
    from hw.engine.isa import Op
    _, staged = compile_err_staged()
    assert sum(ins.op == Op.COPY for ins in staged.instructions) == 2 + 2
    _, on_chip = compile_err_staged(data_words=128)
    assert on_chip.errors[1].end <= 128 and not any(ins.op == Op.COPY and ins.layer == 1 for ins in on_chip.instructions)
    assert on_chip.errors[0].end > 128 and sum(ins.op == Op.COPY and ins.layer == 0 for ins in on_chip.instructions) == 8
    assert not any(ins.op == Op.COPY_ACT for ins in on_chip.instructions)
