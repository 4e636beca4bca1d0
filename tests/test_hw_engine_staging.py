"""The training engine's RTL (Amaranth simulator) with spilled operands staged on chip: error,
gradient and forward staging, gradient products in batch bands with accumulated sums, and the fully
connected layers' bands and blocks (hw.engine.conv's staging compilers), each against the word-level
model and golden. Split from tests/test_hw_engine.py, whose helpers it uses."""

import pytest

from hw.engine.compiler import array_beats
from hw.engine.isa import Op
from hw.engine.protocol import Status
from tests.test_hw_engine import CONV_SPILL_STORE_CONFIG, CONV_WAGE, SPILL_TIMING, conv_mismatches, run_conv_steps

# ---- tile staging ----------------------------------------------------------------------------------

#: An 8×8 input at batch 8 and 32-word scratchpads, behind the slow external memory: E1 (conv2's
#: product errors, 64 words, 8 per image) spills. Conv2's error product stages it in two bands of 4
#: images over E2's words (which the step has read for the last time; a COPY before each band's 16
#: parts: 4 row bands × 4 one-column groups; the finish record walks the rows in (band, group, y,
#: b, x) order), and conv2's gradient product stages it block by block there (2 COPY records, 2
#: parts, a finish record).
CONV_STAGE_CONFIG = CONV_SPILL_STORE_CONFIG.replace(
    wage=CONV_WAGE.replace(input_shape=(1, 8, 8), batch_size=8), data_words=32, external_words=4096, label_words=8)


def gradient_parts_out_of_order(program) -> list[list]:
    """Records of the staged gradient product out of order: a next part without a first; a first
    part then END (the open product — its draw prefetch running — is completed with zero rows); a
    first gradient part then an error product's next part (not the open product's operation)."""
    import dataclasses
    from hw.engine.conv import ConvOp
    ins = program.instructions
    first = next(n for n, i in enumerate(ins) if getattr(i, "part", 0) == 1 and str(i).startswith("CONV_GRAD"))
    grad_next = ins[first + 2]
    assert str(grad_next) == "CONV_GRAD layer 1 part"
    err_next = dataclasses.replace(grad_next, op=ConvOp.CONV_ERR)
    return [[ins[first - 1], grad_next, ins[-1]], [ins[first - 1], ins[first], ins[-1]], [ins[first], err_next, ins[-1]]]


#: The staged network with 64 scratchpad words and a memory of 4 cycles a word: conv2's gradient
#: product runs in 3 batch bands (3, 3, 2 images), E1 and A0 staged for each, its sums accumulated
#: in the external sums (conv1's in 8 bands of one image that stage E0 and read the spilled input
#: batch in place); with a 256-row sum buffer instead (and 32 words), in 8 bands of one image
#: on chip (A0 straddles: 8 words on chip), and the fully connected layer's gradient product stages
#: its spilled input (A1) in 3 column blocks.
CONV_GRAD_BANDS_CONFIG = CONV_STAGE_CONFIG.replace(data_words=64, external_cycles_per_word=4)
CONV_GRAD_BANDS_CHIP_CONFIG = CONV_STAGE_CONFIG.replace(external_sum_words=0, sum_words=256,
                                                        external_cycles_per_word=4)


def gradient_band_faults(program) -> list[list]:
    """Accumulating records the sequencer must refuse: a first part that adds (nothing is stored
    yet), and a held part of an error product (only a gradient product accumulates)."""
    import copy
    ins = program.instructions
    first = next(n for n, i in enumerate(ins) if str(i) == "CONV_GRAD layer 1 part 1 hold")
    adds = copy.copy(ins[first])
    object.__setattr__(adds, "sum_add", 1)               # (ConvInstruction refuses it; the engine must too)
    err = next(i for i in ins if str(i).startswith("CONV_ERR layer 1") and i.part in (0, 1))
    err_first = copy.copy(err)
    object.__setattr__(err_first, "part", 1)
    object.__setattr__(err_first, "part_count", err.part_count or err.qcount)
    object.__setattr__(err_first, "stored", err.stored or 2)
    object.__setattr__(err_first, "sum_hold", 1)
    return [[*ins[first - 2:first], adds, ins[-1]], [err_first, ins[-1]]]


def adding_parts_read_errors_in_place(program):
    """The program with conv2's adding gradient parts reading their band of E1 where it lives, past
    the scratchpad in part or whole, instead of its staged copy (the COPY still runs): while such a
    part adds to external sums, the sums' reads and its error reads share the error reader's port
    client. No compiler emits this (staging leaves the port to the sums); the engine used to wait
    for ever on it."""
    import dataclasses
    from hw.engine.compiler import _external_reads
    ins = list(program.instructions)
    moved = 0
    for n, part in enumerate(ins):
        if str(part).startswith("CONV_GRAD layer 1 part +add"):
            copy = ins[n - 2]
            assert str(copy) == "COPY layer 1" and copy.aux.sk == copy.out.sk == 1
            ins[n] = dataclasses.replace(part, a=dataclasses.replace(part.a, base=part.a.base - copy.out.base
                                                                     + copy.aux.base))
            config = program.config
            assert _external_reads(ins[n].a, config.lanes, config.data_words) > 0
            moved += 1
    assert moved == 2
    return dataclasses.replace(program, instructions=ins)


@pytest.mark.parametrize("config, bands", [(CONV_GRAD_BANDS_CONFIG, 3), (CONV_GRAD_BANDS_CHIP_CONFIG, 8)],
                         ids=["external-sums", "sum-buffer"])
def test_gradient_bands_accumulate_bit_exactly(config, bands):
    """Conv2's gradient product in batch bands: each band's part adds its rows to the stored sums
    and only the last band's rows enter Q_G's pass 1. Both steps match the model and golden in
    every tensor, the external memory saw no fault, the array beats are as predicted, the two
    malformed accumulating records were refused, and one wrong weight bit is caught (in conv2's
    weights, and in the fully connected layer's, which the sum-buffer build stages in column blocks).
    With external sums conv2's adding parts read E1 in place, through the port client the sums'
    reads share (:func:`adding_parts_read_errors_in_place`); conv1's read their staged copies."""
    from hw.engine.conv import PART_FINISH, PART_FIRST, PART_NEXT
    from hw.engine.isa import STORE_CHIP, STORE_EXTERNAL
    edit = adding_parts_read_errors_in_place if config.external_sum_words else None
    program, got, want = run_conv_steps(config, SPILL_TIMING, refused=gradient_band_faults, edit=edit)
    parts = [ins for ins in program.instructions if str(ins).startswith("CONV_GRAD layer 1 part")]
    assert [(p.sum_add, p.sum_hold) for p in parts] == [(0, 1)] + [(1, 1)] * (bands - 2) + [(1, 0)]
    assert {p.stored for p in parts} == {STORE_EXTERNAL if config.external_sum_words else STORE_CHIP}
    assert program.activations[0].end > config.data_words                  # A0 spills (wholly or in part)
    # conv1's gradient product: with external sums, 8 bands of one image that stage E0 and read the
    # input batch where it lives (its copies would cost more port time than they save)
    layer0 = [str(ins) for ins in program.instructions if str(ins).startswith(("COPY", "CONV_GRAD layer 0"))
              and ins.layer == 0]
    assert layer0 == (["COPY layer 0", "CONV_GRAD layer 0 part 1 hold"]
                      + ["COPY layer 0", "CONV_GRAD layer 0 part +add hold"] * 6
                      + ["COPY layer 0", "CONV_GRAD layer 0 part +add", "CONV_GRAD layer 0 finish"]
                      if config.external_sum_words else ["CONV_GRAD layer 0"])
    fc_parts = [ins.part for ins in program.instructions if str(ins).startswith("CONV_GRAD layer 2")]
    assert fc_parts == ([] if config.external_sum_words else [PART_FIRST, PART_NEXT, PART_NEXT, PART_FINISH])
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s].get("ext_fault", 0) for s in range(2)] == [0, 0]
    assert got[0]["refused"] == [Status.BAD_INSTRUCTION] * 2
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] - c0["array_beats"] == array_beats(program) <= c0["array_beats"]
    bad = {**want[1], "weights": [w.copy() for w in want[1]["weights"]]}
    bad["weights"][1].flat[5] = -bad["weights"][1].flat[5] or 1
    assert conv_mismatches(got[1], bad) == ["weights 1"]
    bad["weights"][1], bad["weights"][2] = want[1]["weights"][1], want[1]["weights"][2].copy()
    bad["weights"][2].flat[-1] = -bad["weights"][2].flat[-1] or 1
    assert conv_mismatches(got[1], bad) == ["weights 2"]


@pytest.fixture(scope="module")
def conv_stage_steps():
    """Two steps of the staged program, after its gradient parts out of order were refused."""
    return run_conv_steps(CONV_STAGE_CONFIG, SPILL_TIMING, refused=gradient_parts_out_of_order)


def test_staged_gradient_operand_trains_bit_exactly(conv_stage_steps):
    from hw.engine.conv import PART_FINISH, PART_FIRST, PART_NEXT
    program, got, want = conv_stage_steps
    first = next(n for n, ins in enumerate(program.instructions) if str(ins) == "CONV_GRAD layer 1 part 1") - 1
    staged = [(str(ins), getattr(ins, "part", 0)) for ins in program.instructions[first:]
              if ins.op == Op.COPY or str(ins).startswith("CONV_GRAD layer 1")]
    assert staged == [("COPY layer 1", 0), ("CONV_GRAD layer 1 part 1", PART_FIRST), ("COPY layer 1", 0),
                      ("CONV_GRAD layer 1 part", PART_NEXT), ("CONV_GRAD layer 1 finish", PART_FINISH)]
    assert program.errors[1].base >= CONV_STAGE_CONFIG.data_words          # E1 is spilled
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] - c0["array_beats"] == array_beats(program) <= c0["array_beats"]
    # its gradient parts out of order answered BAD_INSTRUCTION, and the steps after are exact (above)
    assert got[0]["refused"] == [Status.BAD_INSTRUCTION] * 3
    # one wrong bit in conv2's updated weights is caught
    bad = {**want[1], "weights": [w.copy() for w in want[1]["weights"]]}
    bad["weights"][1].flat[3] = -bad["weights"][1].flat[3] or 1
    assert conv_mismatches(got[1], bad) == ["weights 1"]


def test_staged_error_bands_train_bit_exactly(conv_stage_steps):
    """Conv2's error product reads E1 from two staged bands; both steps match the model and
    golden, the external memory saw no fault, and one wrong bit of E0 is caught."""
    from hw.engine.conv import PART_FINISH
    program, got, want = conv_stage_steps
    e1 = program.errors[1]
    assert e1.base >= CONV_STAGE_CONFIG.data_words                        # E1 is spilled
    assert program.overwritten == ("E2",)                                     # staged over E2
    names = [str(ins) for ins in program.instructions]
    first = names.index("CONV_ERR layer 1 part 1") - 1
    err = program.instructions[first:names.index("CONV_ERR layer 1 +unpool finish") + 1]
    assert [str(ins) for ins in err] == ["COPY layer 1", "CONV_ERR layer 1 part 1", *["CONV_ERR layer 1 part"] * 15,
                                         "COPY layer 1", *["CONV_ERR layer 1 part"] * 16, "CONV_ERR layer 1 +unpool finish"]
    assert [(err[n].aux.base, err[n].aux.nk, err[n].out.base) for n in (0, 17)] == \
        [(e1.base, 32, 0), (e1.base + 32, 32, 0)]
    assert err[-1].part == PART_FINISH and err[-1].out.pos_radix == (2, 4, 4, 4, 1)
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] - c0["array_beats"] == array_beats(program) <= c0["array_beats"]
    bad = {**want[1], "E0": want[1]["E0"].copy()}
    bad["E0"].flat[7] ^= 1
    assert conv_mismatches(got[1], bad) == ["E0"]


def test_staged_forward_bands_train_bit_exactly(conv_stage_steps):
    """Eight COPY_ACT records move A0's images (16 words each) from the external memory to the
    activation scratchpad (whole words: values, masks and pool indices, over A2's words, which fc1's
    forward product then writes, pool indices included) and eight CONV_FWD bands read them there;
    both steps match the model and golden, the external memory saw no fault, and one wrong bit is
    caught. (On a smaller map, one output position per image, banding would cost array beats, whole
    row tiles per band, and the compiler does not stage.)"""
    program, got, want = conv_stage_steps
    a0, a1 = program.activations[:2]
    assert a0.base >= CONV_STAGE_CONFIG.data_words                           # A0 is spilled
    staged = [ins for ins in program.instructions if ins.op == Op.COPY_ACT or str(ins).startswith("CONV_FWD layer 1")]
    assert [str(ins) for ins in staged] == ["COPY_ACT layer 1", "CONV_FWD layer 1"] * 8
    assert [(c.aux.base, c.out.base, c.out.nk) for c in staged[::2]] == [(a0.base + 16 * b, 0, 16) for b in range(8)]
    assert [f.out.base for f in staged[1::2]] == [a1.base + 8 * b for b in range(8)]
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0]
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] - c0["array_beats"] == array_beats(program) <= c0["array_beats"]
    bad = {**want[1], "A1": {**want[1]["A1"], "data": want[1]["A1"]["data"].copy()}}
    bad["A1"]["data"].flat[5] ^= 1
    assert conv_mismatches(got[1], bad) == ["A1.data"]


def test_fully_connected_bands_and_blocks_train_bit_exactly():
    """Fully connected products whose operands spill, on the RTL (``FC_BANDS_CONFIG`` of
    tests/test_hw_engine_model.py): both forward products in 2 staged batch bands — fc2's second
    band stages in words of its on-chip output A2 that the first band has not written — and fc2's
    gradient product in 2 column blocks of A1 (conv.compile_fc_fwd_staged, compile_fc_grad_staged).
    Both steps match the model and golden in every tensor, the external memory saw no fault, the
    array beats are as predicted, and one wrong bit of A1 and of fc2's weights is each caught."""
    from tests.test_hw_engine_model import FC_BANDS_CONFIG
    program, got, want = run_conv_steps(FC_BANDS_CONFIG, SPILL_TIMING)
    names = [str(ins) for ins in program.instructions]
    assert names.count("COPY_ACT layer 1") == 2 and names.count("FWD layer 1") == 2
    assert names.count("COPY_ACT layer 2") == 4 and names.count("FWD layer 2") == 2
    assert [n for n in names if n.startswith("CONV_GRAD layer 2")] == \
        ["CONV_GRAD layer 2 part 1", "CONV_GRAD layer 2 part", "CONV_GRAD layer 2 finish"]
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s].get("ext_fault", 0) for s in range(2)] == [0, 0]
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["array_beats"] - c0["array_beats"] == array_beats(program) == c0["array_beats"]
    bad = {**want[1], "A1": {**want[1]["A1"], "data": want[1]["A1"]["data"].copy()}}
    bad["A1"]["data"][-1, 0] ^= 1
    assert conv_mismatches(got[1], bad) == ["A1.data"]
    bad = {**want[1], "weights": [w.copy() for w in want[1]["weights"]]}
    bad["weights"][2].flat[-1] = -bad["weights"][2].flat[-1] or 1
    assert conv_mismatches(got[1], bad) == ["weights 2"]
