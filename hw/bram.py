"""Simple dual-port block RAM with a registered output: one write port, one read port, read latency 2.

:class:`BlockRam` is the RAM every unit that needs block RAM at speed should use. On ECP5 an inferred
``lib.memory.Memory`` maps to DP16KD *without* its output register (yosys does not absorb a following
flip-flop into ``REGMODE = OUTREG``), which caps a design near 150 MHz; ``target="ecp5"`` therefore
instantiates DP16KD directly with the output register on, tiled over the width. ``target="generic"``
describes the same two-cycle pipeline with ``lib.memory`` plus a register, for simulation and other
parts. Both targets behave identically:

* write: ``w_en`` high in cycle t stores ``w_data`` at ``w_addr`` at the end of cycle t;
* read: two registers, both clocked only while ``r_en`` is high (DP16KD CEB and OCEB): the first
  captures the word at ``r_addr``, the second (the output register) the first. With ``r_en`` high
  in cycles t and t + 1, ``r_data`` in cycle t + 2 is the word at ``r_addr`` of cycle t; with
  ``r_en`` low the whole read pipeline holds, which is how a stalled consumer is served. A word
  written in cycle t is read correctly from cycle t + 1 on; reading an address in the very cycle it
  is written is undefined on ECP5 (the generic model returns the old word), so callers avoid it.

The DP16KD port mapping (36-bit mode: write data bits 0–17 on DIA, 18–35 on DIB, byte write enables
on ADA0–3, word address on ADA5–13 / ADB5–13; read data DOA = bits 0–17, DOB = 18–35; narrower modes
use DIA/DOB and the low address pins as sub-word address; in the 36-bit mode the DOA half passes
port A's output register, so REGMODE_A/OCEA are set too) follows yosys's own ECP5 memory map
(``share/lattice/brams_map_16kd.v``, ``$__PDPW16KD_``).
"""

from __future__ import annotations

import math

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["BlockRam", "READ_LATENCY", "dp16kd_count"]

READ_LATENCY = 2
TARGETS = ("generic", "ecp5")
#: DP16KD aspect ratios (data width, depth), widest first.
_DP16KD_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def _dp16kd_mode(depth: int) -> tuple[int, int]:
    for width, mode_depth in _DP16KD_MODES:
        if depth <= mode_depth:
            return width, mode_depth
    raise ValueError(f"depth={depth}: a DP16KD holds at most 16384 words; split the memory into banks")


def dp16kd_count(width: int, depth: int) -> int:
    """DP16KD blocks a ``width`` × ``depth`` :class:`BlockRam` uses with ``target="ecp5"``."""
    return math.ceil(width / _dp16kd_mode(depth)[0])


class BlockRam(wiring.Component):
    """``width`` × ``depth`` simple dual-port RAM, read latency 2 (see the module docstring).

    Parameters
    ----------
    width, depth : int
        Word width in bits (≥ 1) and number of words (``target="ecp5"``: 1..16384, one DP16KD
        column; banking is not built. ``"generic"``: any).
    target : "generic" | "ecp5"
    """

    def __init__(self, width: int, depth: int, *, target: str = "generic"):
        try:
            for name, value in (("width", width), ("depth", depth)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name}={value!r}: must be a positive integer")
            if not isinstance(target, str) or target not in TARGETS:
                raise ValueError(f"target={target!r}: must be one of {', '.join(repr(t) for t in TARGETS)}")
            if target == "ecp5":
                _dp16kd_mode(depth)          # one DP16KD column: at most 16384 words
        except ValueError:
            self._MustUse__silence = True    # a rejected RAM is not an "unused elaboratable"
            raise
        self._width, self._depth, self._target = width, depth, target
        super().__init__({
            "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(depth)), "r_en": In(1, init=1), "r_data": Out(width),
        })

    width = property(lambda self: self._width)
    depth = property(lambda self: self._depth)
    target = property(lambda self: self._target)

    def __repr__(self):
        return f"BlockRam(width={self._width}, depth={self._depth}, target={self._target!r})"

    def elaborate(self, platform):
        m = Module()
        if self._target == "generic":
            m.submodules.memory = memory = Memory(shape=self._width, depth=self._depth, init=[])
            wp = memory.write_port()
            rp = memory.read_port(transparent_for=())
            m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                         rp.addr.eq(self.r_addr), rp.en.eq(self.r_en)]
            out = Signal(self._width, reset_less=True)
            with m.If(self.r_en):
                m.d.sync += out.eq(rp.data)
            m.d.comb += self.r_data.eq(out)
            return m

        bits, mode_depth = _dp16kd_mode(self._depth)
        shift = int(math.log2(16384 // mode_depth))      # address pins below the word address
        for block in range(dp16kd_count(self._width, self._depth)):
            lo = block * bits
            n = min(bits, self._width - lo)
            wd = Signal(bits, name=f"b{block}_wd")
            rd = Signal(bits, name=f"b{block}_rd")
            m.d.comb += [wd.eq(self.w_data[lo:lo + n]), self.r_data[lo:lo + n].eq(rd[:n])]
            ports = {"i_CLKA": ClockSignal("sync"), "i_CLKB": ClockSignal("sync"),
                     "i_CEA": Const(1, 1), "i_CEB": self.r_en, "i_OCEA": self.r_en if bits == 36 else Const(0, 1),
                     "i_OCEB": self.r_en, "i_RSTA": Const(0, 1), "i_RSTB": Const(0, 1),
                     "i_WEB": Const(0, 1)}
            for i in range(3):
                ports[f"i_CSA{i}"] = ports[f"i_CSB{i}"] = Const(0, 1)
            for i in range(14):
                a = i - shift
                ports[f"i_ADA{i}"] = self.w_addr[a] if 0 <= a < len(self.w_addr) else Const(0, 1)
                ports[f"i_ADB{i}"] = self.r_addr[a] if 0 <= a < len(self.r_addr) else Const(0, 1)
            if bits >= 18:                               # byte write enables on ADA0..3, WEA tied high
                ports["i_WEA"] = Const(1, 1)
                for i in range(bits // 9):
                    ports[f"i_ADA{i}"] = self.w_en
            else:
                ports["i_WEA"] = self.w_en
            for i in range(18):
                ports[f"i_DIA{i}"] = wd[i] if i < bits else Const(0, 1)
                ports[f"i_DIB{i}"] = wd[18 + i] if bits == 36 else Const(0, 1)
                if bits == 36:
                    ports[f"o_DOA{i}"], ports[f"o_DOB{i}"] = rd[i], rd[18 + i]
                elif i < bits:
                    ports[f"o_DOB{i}"] = rd[i]
            m.submodules[f"dp16kd_{block}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=bits, p_DATA_WIDTH_B=bits, p_REGMODE_B="OUTREG",
                # in the 36-bit mode read bits 0-17 leave on DOA through port A's output register
                p_REGMODE_A="OUTREG" if bits == 36 else "NOREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
                p_CSDECODE_B="0b000", p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL",
                p_CLKAMUX="CLKA", p_CLKBMUX="CLKB", p_GSR="DISABLED", **ports)
        return m
