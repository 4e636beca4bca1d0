"""pytest entry points for the simulation-infrastructure smoke bench (``sim/tb_smoke.py``).

The design under test is :class:`LaneFifo`, a real (small) unit: a stream FIFO for multi-lane
signed payloads built on ``amaranth.lib.fifo.SyncFIFOBuffered``.
"""

import time

import pytest
from amaranth import Module, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from sim.runner import RESULTS, run_cocotb


class LaneFifo(wiring.Component):
    """Stream FIFO of ``lanes`` × ``signed(width)`` payloads, ``depth`` entries, registered output.

    ``i`` and ``o`` are ``amaranth.lib.stream`` interfaces whose payload is
    ``data.ArrayLayout(signed(width), lanes)`` (lane 0 in the low bits).
    """

    def __init__(self, *, lanes: int, width: int, depth: int):
        for pname, v in (("lanes", lanes), ("width", width), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{pname}={v!r}: must be a positive integer")
        self.lanes, self.width, self.depth = lanes, width, depth
        layout = data.ArrayLayout(signed(width), lanes)
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self.lanes * self.width, depth=self.depth)
        m.d.comb += [
            q.w_data.eq(self.i.payload), q.w_en.eq(self.i.valid), self.i.ready.eq(q.w_rdy),
            self.o.payload.eq(q.r_data), self.o.valid.eq(q.r_rdy), q.r_en.eq(self.o.ready),
        ]
        return m


PARAMS = {"lanes": 4, "width": 8, "depth": 5}


def test_lane_fifo_random_stalls():
    r = run_cocotb(LaneFifo(**PARAMS), name="lane_fifo", test_module="sim.tb_smoke",
                   parameters={**PARAMS, "beats": 10_000, "stall": 0.3, "backpressure": 0.3})
    assert r.passed == 2 and r.failed == 0 and r.skipped == 1   # hangs_forever runs only on request


def test_runner_reports_failing_cocotb_test():
    """A scoreboard mismatch inside the simulator must fail pytest, naming the cocotb test."""
    with pytest.raises(AssertionError, match=r"1 of 1 cocotb tests failed: fifo_random") as info:
        run_cocotb(LaneFifo(**PARAMS), name="lane_fifo", test_module="sim.tb_smoke", testcase="fifo_random",
                   parameters={**PARAMS, "beats": 300, "stall": 0.2, "backpressure": 0.2, "mutate_beat": 17})
    result = RESULTS[-1]
    assert result.failures == ["fifo_random"] and result.tests == 1
    assert str(result.seed) in str(info.value)
    log = result.log.read_text()
    assert "'o' beat 17:" in log and "got [" in log and "ScoreboardMismatch" in log


def test_waves_fst_and_gtkw():
    r = run_cocotb(LaneFifo(**PARAMS), name="lane_fifo", test_module="sim.tb_smoke", testcase="fifo_random",
                   parameters={**PARAMS, "beats": 50}, waves=True)
    assert r.waves.suffix in (".fst", ".vcd") and r.waves.is_file() and r.waves.stat().st_size > 0
    gtkw = r.gtkw.read_text()
    assert str(r.waves) in gtkw and "lane_fifo_tb.o__payload[31:0]" in gtkw


def test_runner_timeout_kills_hung_simulation():
    t = time.monotonic()
    with pytest.raises(AssertionError, match=r"killed after 3 s \(timeout_s\)"):
        run_cocotb(LaneFifo(**PARAMS), name="lane_fifo", test_module="sim.tb_smoke", testcase="hangs_forever",
                   parameters={**PARAMS, "hang": True}, timeout_s=3)
    assert time.monotonic() - t < 60
    assert RESULTS[-1].tests == 0 and "killed" in RESULTS[-1].error
