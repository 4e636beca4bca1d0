"""hw.bram.BlockRam: the two-cycle read pipeline (generic model) and the DP16KD mapping (ECP5)."""

import random

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from hw.bram import READ_LATENCY, BlockRam, bank_depths, dp16kd_count


@pytest.mark.parametrize("kwargs,exc,text", [
    (dict(width=0, depth=4), ValueError, "width=0"),
    (dict(width=8, depth=0), ValueError, "depth=0"),
    (dict(width=8, depth=True), ValueError, "depth=True"),
    (dict(width=8, depth=4, target="xilinx"), ValueError, "target='xilinx'"),
])
def test_bad_parameters_name_the_value(kwargs, exc, text):
    with pytest.raises(exc, match=text.replace("(", r"\(")):
        BlockRam(**kwargs)


def test_a_simulation_ram_may_be_deeper_than_one_dp16kd_column():
    ram = BlockRam(8, 1 << 18)
    ram._MustUse__silence = True              # built for its parameters only
    assert ram.depth == 1 << 18


def test_dp16kd_count_follows_the_aspect_ratios():
    assert dp16kd_count(36, 512) == 1
    assert dp16kd_count(37, 512) == 2
    assert dp16kd_count(576, 128) == 16
    assert dp16kd_count(18, 1024) == 1
    assert dp16kd_count(19, 1000) == 2
    assert dp16kd_count(9, 2048) == 1
    assert dp16kd_count(1, 16384) == 1
    # deeper than a column, or cheaper split: banks of aspect-ratio depths
    assert bank_depths(64, 25088) == (16384, 8192, 512) and dp16kd_count(64, 25088) == 64 + 32 + 2
    assert bank_depths(64, 8704) == (8192, 512) and dp16kd_count(64, 8704) == 34
    assert bank_depths(18, 600) == (600,)          # one 1024-deep column beats 512 + 88


def test_bad_banks_are_named():
    with pytest.raises(ValueError, match=r"banks=\(32, 4\): must be positive integers summing to depth=37"):
        BlockRam(8, 37, banks=(32, 4))
    with pytest.raises(ValueError, match="the bank of 32 words at address 4 is not aligned"):
        BlockRam(8, 36, banks=(4, 32))
    with pytest.raises(ValueError, match="at most 16384 words"):
        BlockRam(8, 32768, target="ecp5", banks=(32768,))


def test_ecp5_deep_memory_is_banked():
    width, depth = 64, 25088
    text = rtlil.convert(BlockRam(width, depth, target="ecp5"))
    assert text.count("cell \\DP16KD ") == dp16kd_count(width, depth) == 98
    for bits in (1, 2, 36):                        # 16384 × 1, 8192 × 2, 512 × 36 columns
        assert f"parameter \\DATA_WIDTH_A {bits}" in text


@pytest.mark.parametrize("depth, banks", [(37, None), (37, (32, 4, 1)), (100, (64, 32, 3, 1))])
def test_generic_model_read_latency_hold_and_write_visibility(depth, banks):
    """Random writes and reads against a Python model, with r_en low in random cycles; also split
    into banks (the ECP5 datapath of deep memories, with generic leaves)."""
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    width = 13
    dut = BlockRam(width, depth, banks=banks)
    model = [0] * depth
    errors = []

    async def bench(ctx):
        pipe = [None, None]             # (stage 1, output register) as the model sees them
        for cycle in range(2000):
            w_en = rng.random() < 0.5
            w_addr, w_data = rng.randrange(depth), rng.randrange(1 << width)
            r_addr, r_en = rng.randrange(depth), rng.random() < 0.8
            ctx.set(dut.w_en, w_en)
            ctx.set(dut.w_addr, w_addr)
            ctx.set(dut.w_data, w_data)
            ctx.set(dut.r_addr, r_addr)
            ctx.set(dut.r_en, r_en)
            got = ctx.get(dut.r_data)
            if pipe[1] is not None and got != pipe[1]:
                errors.append((cycle, got, pipe[1]))
            if r_en:                    # the read sees the RAM before this cycle's write
                pipe = [model[r_addr] if r_addr != w_addr or not w_en else None, pipe[0]]
            if w_en:
                model[w_addr] = w_data
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert READ_LATENCY == 2
    assert errors == [], f"seed {seed}: first mismatches (cycle, got, want) {errors[:5]}"


@pytest.mark.parametrize("width,depth,bits,shift", [(72, 64, 36, 5), (20, 1000, 18, 4), (5, 2048, 9, 3),
                                                    (3, 16384, 1, 0)])
def test_ecp5_instantiates_dp16kd_with_output_register(width, depth, bits, shift):
    text = rtlil.convert(BlockRam(width, depth, target="ecp5"))
    cells = text.count("cell \\DP16KD ")
    assert cells == dp16kd_count(width, depth)
    assert text.count('parameter \\REGMODE_B "OUTREG"') == cells
    assert text.count(f"parameter \\DATA_WIDTH_A {bits}") == cells
    # the word address starts at pin ADA{shift} / ADB{shift}; lower pins are byte enables or 0
    assert f"connect \\ADB{shift} " in text
    block = text[text.index("cell \\DP16KD "):]
    block = block[:block.index("end")]
    assert f"connect \\ADB{shift} 1'0" not in block
    if shift:
        assert f"connect \\ADB{shift - 1} 1'0" in block
