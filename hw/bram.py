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

Depth: one DP16KD column holds up to 16384 words (one bit wide each). A deeper memory, or one that
fits fewer blocks that way, is split into *banks* (:func:`bank_depths`): consecutive, aligned address
ranges whose depths are DP16KD aspect-ratio depths, largest first — 25,088 words of 64 bits become
16384 + 8192 + 512 words in 64 + 32 + 2 blocks instead of two 16384-word columns (128). A write goes
to the bank its address falls in; a read's bank index travels with the read through both pipeline
registers and selects that bank's output (one LUT level after the output registers).
"""

from __future__ import annotations

import math

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["BlockRam", "READ_LATENCY", "bank_depths", "dp16kd_count"]

READ_LATENCY = 2
TARGETS = ("generic", "ecp5")
#: DP16KD aspect ratios (data width, depth), widest first.
_DP16KD_MODES = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))


def _dp16kd_mode(depth: int) -> tuple[int, int]:
    for width, mode_depth in _DP16KD_MODES:
        if depth <= mode_depth:
            return width, mode_depth
    raise ValueError(f"depth={depth}: a DP16KD holds at most 16384 words; split the memory into banks")


def _column_count(width: int, depth: int) -> int:
    """DP16KD blocks of one column (one bank) of ``depth`` ≤ 16384 words."""
    return math.ceil(width / _dp16kd_mode(depth)[0])


def bank_depths(width: int, depth: int) -> tuple[int, ...]:
    """The banks a ``width`` × ``depth`` :class:`BlockRam` is split into on ECP5 (their depths, in
    address order): one column when ``depth`` ≤ 16384 and no split uses fewer DP16KD; otherwise
    the greedy split into aspect-ratio depths (16384, 8192, …, 512, then the < 512 rest)."""
    split, rest = [], depth
    while rest:
        d = next((md for _, md in reversed(_DP16KD_MODES) if md <= rest), rest)   # rest < 512: itself
        split.append(d)
        rest -= d
    if depth <= 16384 and _column_count(width, depth) <= sum(_column_count(width, d) for d in split):
        return (depth,)
    return tuple(split)


def dp16kd_count(width: int, depth: int) -> int:
    """DP16KD blocks a ``width`` × ``depth`` :class:`BlockRam` uses with ``target="ecp5"``."""
    return sum(_column_count(width, d) for d in bank_depths(width, depth))


def _check_banks(depth: int, banks) -> tuple[int, ...]:
    banks = tuple(banks)
    if not banks or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in banks) \
            or sum(banks) != depth:
        raise ValueError(f"banks={banks!r}: must be positive integers summing to depth={depth}")
    base = 0
    for d in banks:                     # the local address is the low bits: base aligned to the bank
        if base % (1 << (d - 1).bit_length()):
            raise ValueError(f"banks={banks!r}: the bank of {d} words at address {base} is not aligned "
                             f"to {1 << (d - 1).bit_length()} words")
        base += d
    return banks


class BlockRam(wiring.Component):
    """``width`` × ``depth`` simple dual-port RAM, read latency 2 (see the module docstring).

    Parameters
    ----------
    width, depth : int
        Word width in bits (≥ 1) and number of words (any; on ECP5 split into banks as needed).
    target : "generic" | "ecp5"
    banks : tuple of int, optional
        Bank depths in address order (default: one bank for "generic", :func:`bank_depths` for
        "ecp5"); each bank must start at a multiple of its size rounded up to a power of two.
        Given explicitly, it lets the generic model exercise the banked datapath.
    """

    def __init__(self, width: int, depth: int, *, target: str = "generic", banks=None):
        try:
            for name, value in (("width", width), ("depth", depth)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name}={value!r}: must be a positive integer")
            if not isinstance(target, str) or target not in TARGETS:
                raise ValueError(f"target={target!r}: must be one of {', '.join(repr(t) for t in TARGETS)}")
            if banks is None:
                banks = bank_depths(width, depth) if target == "ecp5" else (depth,)
            banks = _check_banks(depth, banks)
            if target == "ecp5" and max(banks) > 16384:
                raise ValueError(f"banks={banks!r}: a DP16KD bank holds at most 16384 words")
        except ValueError:
            self._MustUse__silence = True    # a rejected RAM is not an "unused elaboratable"
            raise
        self._width, self._depth, self._target, self._banks = width, depth, target, banks
        super().__init__({
            "w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(depth)), "r_en": In(1, init=1), "r_data": Out(width),
        })

    width = property(lambda self: self._width)
    depth = property(lambda self: self._depth)
    target = property(lambda self: self._target)
    banks = property(lambda self: self._banks)

    def __repr__(self):
        return f"BlockRam(width={self._width}, depth={self._depth}, target={self._target!r})"

    def elaborate(self, platform):
        if len(self._banks) > 1:
            return self._elaborate_banked()
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

    def _elaborate_banked(self):
        m = Module()
        n = len(self._banks)
        sel_w, sel_r = Signal(range(n)), Signal(range(n))
        base = 0
        leaves = []
        for i, d in enumerate(self._banks):
            leaf = BlockRam(self._width, d, target=self._target)
            m.submodules[f"bank{i}"] = leaf
            local = (d - 1).bit_length()
            m.d.comb += [leaf.w_addr.eq(self.w_addr[:local]), leaf.w_data.eq(self.w_data),
                         leaf.w_en.eq(self.w_en & (sel_w == i)),
                         leaf.r_addr.eq(self.r_addr[:local]), leaf.r_en.eq(self.r_en)]
            with m.If((self.w_addr >= base) & (self.w_addr < base + d)):
                m.d.comb += sel_w.eq(i)
            with m.If((self.r_addr >= base) & (self.r_addr < base + d)):
                m.d.comb += sel_r.eq(i)
            leaves.append(leaf)
            base += d
        # The bank index follows the read through the leaves' two registers (clocked by r_en too).
        sel_1, sel_2 = Signal(range(n)), Signal(range(n))
        with m.If(self.r_en):
            m.d.sync += [sel_1.eq(sel_r), sel_2.eq(sel_1)]
        with m.Switch(sel_2):
            for i, leaf in enumerate(leaves):
                with m.Case(i):
                    m.d.comb += self.r_data.eq(leaf.r_data)
        return m
