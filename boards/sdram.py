"""SDR SDRAM controller for the ULX3S's 32 MB chip, behind the engine's external-memory port.

The part is a 256 Mb × 16 SDR SDRAM of the MT48LC16M16A2 class (4 banks × 8192 rows × 512
columns × 16 bits). :class:`SDRAMTiming` holds the datasheet times in one place,
:meth:`SDRAMTiming.cycles` turns them into the whole-cycle :class:`SDRAMCycles` that both the
:class:`SDRAMController` and the checking model (:mod:`boards.sdram_model`) use.

Address map
-----------
An engine word of ``data_width`` bits takes ``beats = ceil(data_width / 16)`` consecutive 16-bit
columns (beat 0 holds the low bits). Word address ``w`` starts at *beat address*
``L = w · beats`` and the beat address is split, low to high, as::

    L = | row (13) | column, high (9 − i) | bank (2) | column, low (i) |

with ``2**i = bank_interleave`` beats in one bank before the next (default 512: the bank bits
right above the 9 column bits). With ``bank_hash`` the bank is those two bits XOR the row's low two
bits. A sequential stream takes ``bank_interleave`` columns of a row, goes on in the same row of
the next bank (whose row can be open already: open-row policy), and only after all four banks' 512
columns of that row moves on to the next row: whatever the map, a stream misses once per 512
columns of a bank. What the map changes is where *strided* streams land: with the plain map, words
a multiple of 512 columns apart share nothing but their bank's row register (each of LeNet-5's fc1
forward reads walks 8 weight rows of 512 columns: 8 rows open in 4 banks, a miss per word); with a
finer interleave they fall in fewer rows, and the hash spreads streams a whole row apart over the
banks instead of one. :func:`engine_sdram` uses 64 columns hashed (LeNet-5 b128 at 37.5 MHz: 2.74 M
→ 1.18 M ACTIVATEs and 6 % fewer cycles a step). No column is wasted (a word may straddle a row or
bank boundary; every beat carries its own bank and row: :meth:`SDRAMController.beat_location`).
``2**addr_bits · beats`` must fit the chip's 2**24 beats.

A *narrow region* (``narrow_start``, ``narrow_words``, ``narrow_width``) holds words of which
only the low ``narrow_width`` bits mean anything: each takes ``narrow_beats = ceil(narrow_width /
16)`` columns instead of ``beats``, packed the same way, and the words after the region follow it
(:meth:`SDRAMController.beat_address`). A read returns the low ``narrow_beats`` columns with the
bits above them 0; a write stores only those. The engine's stored weights are such words, and its
spilled error tensors when the configuration has an error region (:func:`engine_sdram`: L·kG and
8·L bits of an L·12-bit external word, 4 of 6 columns at 8 lanes), so its weight-bound products
and its error reads and writes move a third fewer columns. A command is sized by its first word's
region: the engine's never crosses one (its activations, errors, weights and sums are separate
tensors and clients' regions; ``tests/test_boards_sdram_system.py`` checks the commands of a
training run).

Burst and refresh policy
------------------------
* **Init**: CKE high, NOPs and DQM high for ``t_init`` (100 µs), PRECHARGE ALL,
  ``init_refreshes`` AUTO REFRESHes ``tRFC`` apart, LOAD MODE REGISTER (:func:`mode_register`),
  ``tMRD``; then ``ready`` rises and commands are taken.
* **Burst length 1** in the mode register, one READ or WRITE command per 16-bit beat. SDR SDRAM
  takes a column command every clock, so a row hit streams at one beat per clock (one engine word
  per ``beats`` clocks) with no burst bookkeeping, and a burst can cross a row or bank boundary or
  be interrupted by a refresh between any two beats.
* **Open-row policy** per bank: a row stays open until another row of that bank is needed (PRE,
  ACT) or a refresh closes all banks. ``row_misses`` counts the ACTIVATEs issued for data.
* **Refresh**: a timer ticks every ``t_refi`` cycles (counted from the first AUTO REFRESH of the
  init sequence) and adds one to an *owed* count. Owed refreshes are done (PRECHARGE ALL, then AUTO
  REFRESH, repeated while owed) as soon as the controller is idle, and urgently — in the middle of
  a burst, between two beats — once ``max(refresh_postpone, 1)`` are owed. An urgent refresh
  reaches the pins within about ``2 + max(tRAS, tWR) + tRP + tRFC`` cycles (a few tens, far below
  ``t_refi``), so the model's rule (:mod:`boards.sdram_model`: never more than
  ``refresh_postpone`` behind the one-per-tREFI schedule, i.e. with nothing banked at most
  ``(refresh_postpone + 1) · tREFI`` between refreshes, as JEDEC allows for 8 postponed) holds
  with about one ``t_refi`` to spare (for ``refresh_postpone = 0`` the spare comes from the init
  sequence's second refresh). The same bound keeps every row open less than tRAS(max) (checked
  when the cycles are made), so tRAS(max) is respected without a timer of its own.
* **Timing**: every wait is a small down-counter per bank (ACT, PRE, column command) or global
  (tRRD, turnaround) with a registered "elapsed" flag, and the current beat's bank status (open,
  row hit) is a register computed in parallel for the three addresses the next beat can have, or
  set by the ACTIVE (open, hit) or PRECHARGE (closed) just decided, so a row miss costs its two
  commands and tRP + tRCD, not a cycle more for each (at 37.5 MHz, where both are one cycle, a
  miss takes 2 cycles). All pin outputs are flip-flops. Measured
  out of context on an LFE5U-85F-6 (``hw.synth``): about 119 MHz at ``data_width=48`` (before the
  status was set by the ACTIVE and PRECHARGE).
* **Read → write turnaround**: a WRITE (which drives DQ) waits until ``CL + 2`` cycles after the
  last READ, one idle bus cycle after the read data, so the chip's and the FPGA's drivers never
  overlap. WRITE → READ needs nothing with burst length 1.

Board glue (not here)
---------------------
:class:`SDRAMPinsSignature` is the controller's view of the chip, with DQ split into
``dq_o``/``dq_oe``/``dq_i``. The board top must drive the chip's clock (the controller's clock,
phase-shifted by a PLL output if the I/O timing needs it), put the pins through I/O registers
(an output register on every command/address/DQ-out/DQ-enable pin, an input register on DQ-in)
and pass the total extra round-trip delay in clocks as ``read_delay``: with one output and one
input register that is 2. The controller's pin outputs are themselves registers.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from amaranth.hdl import Cat, ClockDomain, ClockSignal, DomainRenamer, Module, Mux, ResetSignal, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hw.engine.extcdc import ExternalMemoryCDC
from hw.engine.extmem import MAX_BURST, ExternalMemorySignature
from hw.engine.skid import PingPongBuffer

__all__ = ["DATASHEET", "SDRAMTiming", "SDRAMCycles", "SDRAMGeometry", "SDRAMPinsSignature",
           "SDRAMController", "mode_register", "COMMANDS", "engine_sdram", "connect_engine_port",
           "sdram_clock_domain", "clock_domain_freqs", "clock_domain_side", "connect_engine_sdram",
           "RESET_STAGES", "local_reset_domain", "MAX_READ_DELAY"]

#: Where the numbers of :class:`SDRAMTiming` come from.
DATASHEET = ("Micron 256Mb x4/x8/x16 SDRAM (MT48LC16M16A2), speed grade -6A, "
             "Table 'Electrical Characteristics and Recommended AC Operating Conditions'")

#: The largest ``read_delay`` a controller takes (clocks between its pins and its data sample).
MAX_READ_DELAY = 8

#: SDRAM commands as (ras_n, cas_n, we_n) with cs_n low.
COMMANDS = {
    "NOP": (1, 1, 1), "ACTIVE": (0, 1, 1), "READ": (1, 0, 1), "WRITE": (1, 0, 0),
    "BURST_TERMINATE": (1, 1, 0), "PRECHARGE": (0, 1, 0), "AUTO_REFRESH": (0, 0, 1),
    "LOAD_MODE": (0, 0, 0),
}


def _check_int(name, value, low, high=None):
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r}: must be an integer {bound}")


def _ceil(x: float) -> int:
    """Round up, ignoring float noise (60 ns at 100 MHz is 6 cycles, not 7)."""
    return math.ceil(round(x, 6))


def _floor(x: float) -> int:
    return math.floor(round(x, 6))


@dataclass(frozen=True)
class SDRAMTiming:
    """Datasheet times in ns (see :data:`DATASHEET`; -6A column unless noted).

    Minimum times round *up* to whole cycles (at least 1), maximum times (``t_ras_max``, the
    refresh interval) round *down*.
    """
    t_rc: float = 60.0               # ACTIVE to ACTIVE, same bank
    t_rcd: float = 18.0              # ACTIVE to READ/WRITE
    t_rp: float = 18.0               # PRECHARGE period
    t_ras: float = 42.0              # ACTIVE to PRECHARGE
    t_ras_max: float = 120_000.0     # a row may stay open at most this long
    t_wr: float = 12.0               # last write data to PRECHARGE: the larger of this and
    t_wr_after_clock: float = 6.0    # ... "1 CLK + 6 ns" (both rows of the table: conservative)
    t_rrd: float = 12.0              # ACTIVE bank a to ACTIVE bank b
    t_mrd_clocks: int = 2            # LOAD MODE REGISTER to any command (in clocks)
    t_rfc: float = 66.0              # AUTO REFRESH period: the table gives 60 for -6A and 66 for
                                     # -7E/-75; 66 covers all three grades
    t_xsr: float = 67.0              # self-refresh exit (not used: the controller never self-refreshes)
    refresh_rows: int = 8192         # rows refreshed ...
    t_ref_ms: float = 64.0           # ... every this many ms: tREFI = 64 ms / 8192 = 7.8125 µs
    t_power_up: float = 100_000.0    # wait after power-up (clock running, CKE high, NOPs)
    t_ck_min: float = 6.0            # tCK(3): the part's fastest clock, 166.67 MHz, at CL 3
    t_ck_min_cl2: float = 10.0       # tCK(2): CL 2 only at clocks up to 100 MHz
    init_refreshes: int = 2          # AUTO REFRESHes in the init sequence
    refresh_postpone: int = 8        # refreshes that may be owed (JEDEC allows 8)
    cas_latency: int | None = None   # None: the lowest the clock allows (2 up to 100 MHz, else 3)

    @property
    def t_refi(self) -> float:
        """Average refresh interval in ns."""
        return self.t_ref_ms * 1e6 / self.refresh_rows

    def cycles(self, clk_freq_hz) -> "SDRAMCycles":
        """These times in whole cycles of ``clk_freq_hz`` (see the class docstring)."""
        if isinstance(clk_freq_hz, bool) or not isinstance(clk_freq_hz, numbers.Real) \
                or not math.isfinite(clk_freq_hz) or clk_freq_hz <= 0:
            raise ValueError(f"clk_freq_hz={clk_freq_hz!r}: must be a positive frequency in Hz")
        t_ck = 1e9 / clk_freq_hz
        # 1 ppm of slack so that 166_666_667 Hz (the usual spelling of 6 ns) is accepted
        if t_ck * (1 + 1e-6) < self.t_ck_min:
            raise ValueError(f"clk_freq_hz={clk_freq_hz!r}: above the part's maximum clock "
                             f"{1e3 / self.t_ck_min:.3f} MHz (tCK(3) = {self.t_ck_min} ns)")
        cl2_ok = t_ck * (1 + 1e-6) >= self.t_ck_min_cl2
        cl = self.cas_latency
        if cl is None:
            cl = 2 if cl2_ok else 3
        elif cl not in (2, 3):
            raise ValueError(f"cas_latency={cl!r}: must be 2, 3 or None")
        elif cl == 2 and not cl2_ok:
            raise ValueError(f"cas_latency=2: allowed only up to {1e3 / self.t_ck_min_cl2:.3f} MHz, "
                             f"clk_freq_hz={clk_freq_hz!r}")

        def up(ns):
            return max(1, _ceil(ns / t_ck))

        return SDRAMCycles(
            clk_freq_hz=clk_freq_hz, cas_latency=cl,
            t_rc=up(self.t_rc), t_rcd=up(self.t_rcd), t_rp=up(self.t_rp), t_ras=up(self.t_ras),
            t_ras_max=_floor(self.t_ras_max / t_ck),
            t_wr=max(up(self.t_wr), 1 + up(self.t_wr_after_clock)),
            t_rrd=up(self.t_rrd), t_mrd=self.t_mrd_clocks, t_rfc=up(self.t_rfc), t_xsr=up(self.t_xsr),
            t_refi=_floor(self.t_refi / t_ck), t_init=up(self.t_power_up),
            init_refreshes=self.init_refreshes, refresh_postpone=self.refresh_postpone)


@dataclass(frozen=True)
class SDRAMCycles:
    """Whole-cycle timing at one clock, shared by the controller and the model.

    Every ``t_*`` is "at least this many cycles from the first command to the second" (a command
    ``n`` cycles after another satisfies ``n >= t``), except ``t_ras_max`` and ``t_refi``, which
    are upper bounds. Validated on construction, so a :func:`dataclasses.replace` copy (the tests
    shorten parameters that way) is checked too.
    """
    clk_freq_hz: float
    cas_latency: int
    t_rc: int
    t_rcd: int
    t_rp: int
    t_ras: int
    t_ras_max: int
    t_wr: int
    t_rrd: int
    t_mrd: int
    t_rfc: int
    t_xsr: int
    t_refi: int
    t_init: int
    init_refreshes: int
    refresh_postpone: int

    def __post_init__(self):
        if self.cas_latency not in (2, 3):
            raise ValueError(f"cas_latency={self.cas_latency!r}: must be 2 or 3")
        for f in dataclasses.fields(self):
            if f.name.startswith("t_"):
                _check_int(f.name, getattr(self, f.name), 1)
        _check_int("init_refreshes", self.init_refreshes, 2, 16)
        _check_int("refresh_postpone", self.refresh_postpone, 0, 8)
        # a row opened just after a refresh stays open until the next one at the latest
        if (self.refresh_postpone + 2) * self.t_refi > self.t_ras_max:
            raise ValueError(f"t_refi={self.t_refi}, refresh_postpone={self.refresh_postpone}: "
                             f"(refresh_postpone + 2) · t_refi exceeds t_ras_max={self.t_ras_max}")

    @property
    def refresh_urgent(self) -> int:
        """Owed refreshes at which the controller interrupts a burst to refresh."""
        return max(self.refresh_postpone, 1)


@dataclass(frozen=True)
class SDRAMGeometry:
    """Chip organisation: address bits per bank/row/column and the data bus width."""
    bank_bits: int = 2
    row_bits: int = 13
    col_bits: int = 9
    data_width: int = 16

    def __post_init__(self):
        _check_int("bank_bits", self.bank_bits, 1, 3)
        _check_int("row_bits", self.row_bits, 1, 14)
        _check_int("col_bits", self.col_bits, 1, 10)     # A10 is the auto-precharge bit
        if self.data_width not in (8, 16, 32):
            raise ValueError(f"data_width={self.data_width!r}: must be 8, 16 or 32")

    @property
    def banks(self) -> int:
        return 1 << self.bank_bits

    @property
    def addr_pins(self) -> int:
        """Width of A[]: the row address, and at least A0..A10 (A10 selects PRECHARGE ALL)."""
        return max(self.row_bits, 11)

    @property
    def bytes(self) -> int:
        return self.data_width // 8

    @property
    def beat_bits(self) -> int:
        """Bits of a beat (column) address over the whole chip."""
        return self.col_bits + self.bank_bits + self.row_bits


class SDRAMPinsSignature(wiring.Signature):
    """The chip's pins from the controller's side (outputs are ``Out``; ``dq_i`` is ``In``).
    Command pins start inhibited (``cs_n`` … high) and DQM high, as the power-up needs."""

    def __init__(self, geometry: SDRAMGeometry = SDRAMGeometry()):
        if not isinstance(geometry, SDRAMGeometry):
            raise TypeError(f"geometry={geometry!r}: must be an SDRAMGeometry")
        self.geometry = g = geometry
        super().__init__({
            "cke": Out(1), "cs_n": Out(1, init=1), "ras_n": Out(1, init=1), "cas_n": Out(1, init=1),
            "we_n": Out(1, init=1), "ba": Out(g.bank_bits), "a": Out(g.addr_pins),
            "dqm": Out(g.bytes, init=(1 << g.bytes) - 1),
            "dq_o": Out(g.data_width), "dq_oe": Out(1), "dq_i": In(g.data_width),
        })

    def __eq__(self, other):
        return type(other) is type(self) and other.geometry == self.geometry

    def __hash__(self):
        return hash((type(self), self.geometry))

    def __repr__(self):
        return f"SDRAMPinsSignature({self.geometry!r})"


def mode_register(cas_latency: int) -> int:
    """The LOAD MODE REGISTER value: burst length 1, sequential, CL, standard operation,
    programmed burst length for writes."""
    return cas_latency << 4


def _down(timer):
    """``timer - 1`` saturating at 0."""
    return Mux(timer == 0, 0, timer - 1)


def _at_least(value, floor: int):
    return Mux(value > floor, value, floor)


def _times_constant(value, k: int):
    """``value * k`` as a sum of shifts (a constant multiply would take a DSP block)."""
    terms = [value << i for i in range(k.bit_length()) if k >> i & 1]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _countdown(m, name, ok, loads):
    """A wait timer and its registered zero flag ``ok`` (so decisions read a flip-flop).

    ``loads``: (condition, n, keep_longer) by priority: "the next command of this kind must come
    at least ``n`` cycles after the one issued now"; with ``keep_longer`` a wait already running
    that is longer is kept. Loaded with ``n - 1``: counted in decision cycles, a command decided
    ``n`` cycles later reaches the pins ``n`` cycles later.
    """
    longest = max(n for _, n, _ in loads)
    timer = Signal(range(longest), name=name)
    down, at_most_one = _down(timer), timer <= 1
    value, zero = down, at_most_one
    for condition, n, keep_longer in reversed(loads):
        value = Mux(condition, _at_least(down, n - 1) if keep_longer else n - 1, value)
        zero = Mux(condition, (at_most_one if keep_longer else 1) if n == 1 else 0, zero)
    m.d.sync += [timer.eq(value), ok.eq(zero)]
    return timer


class SDRAMController(wiring.Component):
    """The engine's external memory on an SDR SDRAM (see the module docstring).

    Parameters
    ----------
    data_width : int
        Bits per engine word (1..4096); a word is ``beats = ceil(data_width / 16)`` columns.
    addr_bits : int
        Width of the port's word address; ``2**addr_bits · beats`` must fit the chip.
    clk_freq : float or None
        Controller (and chip) clock in Hz; may be omitted when ``cycles`` is given.
    timing : SDRAMTiming
    geometry : SDRAMGeometry
    max_burst : int
        Largest ``cmd.count`` (1..256).
    cycles : SDRAMCycles or None
        Explicit whole-cycle timing, instead of ``timing.cycles(clk_freq)`` (tests use it to build
        deliberately wrong controllers).
    read_delay : int
        Extra clocks the board adds between the controller's registered pins and its ``dq_i``
        sample (I/O registers; 0..:data:`MAX_READ_DELAY`): read data is sampled ``CL + read_delay`` cycles after the
        cycle the READ shows on the controller's pins.
    narrow_start, narrow_words, narrow_width : int
        The narrow region (see the module docstring): words ``narrow_start …
        narrow_start + narrow_words − 1`` keep only their low ``narrow_width`` bits (1..data_width)
        in ``ceil(narrow_width / 16)`` columns. ``narrow_words = 0``: none.
    bank_interleave : int or None
        Consecutive beats in one bank before the next (module docstring): a power of two from 2 to
        the columns of a row; None: a whole row (``2**col_bits``).
    bank_hash : bool
        The bank is the beat address's bank bits XOR the row's low bits (module docstring).

    Statistics (``Out(32)``, wrapping): ``read_words`` (words put in the read FIFO),
    ``write_words`` (words whose last beat was written), ``refreshes`` (periodic AUTO REFRESHes,
    not the init sequence's), ``row_misses`` (ACTIVATEs for data). ``ready`` is high once the
    init sequence is done.

    Write data passes a ``max_burst``-word FIFO (so it may arrive before its command) and read
    data a FIFO that a read word is reserved in before its first beat is issued, so ``r.ready``
    may stall freely. A command with ``count == 0`` is accepted and ignored; words past the end
    of the chip wrap to beat address 0.
    """

    def __init__(self, data_width: int, addr_bits: int, clk_freq=None, timing: SDRAMTiming = SDRAMTiming(),
                 geometry: SDRAMGeometry = SDRAMGeometry(), max_burst: int = MAX_BURST, *,
                 cycles: SDRAMCycles | None = None, read_delay: int = 0,
                 narrow_start: int = 0, narrow_words: int = 0, narrow_width: int | None = None,
                 bank_interleave: int | None = None, bank_hash: bool = False):
        try:
            _check_int("data_width", data_width, 1, 4096)
            _check_int("addr_bits", addr_bits, 1, 32)
            _check_int("max_burst", max_burst, 1, 256)
            _check_int("read_delay", read_delay, 0, MAX_READ_DELAY)
            _check_int("narrow_words", narrow_words, 0, 1 << addr_bits)
            _check_int("narrow_start", narrow_start, 0, (1 << addr_bits) - narrow_words)
            if narrow_width is None:
                narrow_width = data_width
            _check_int("narrow_width", narrow_width, 1, data_width)
            if not isinstance(timing, SDRAMTiming):
                raise TypeError(f"timing={timing!r}: must be an SDRAMTiming")
            if not isinstance(geometry, SDRAMGeometry):
                raise TypeError(f"geometry={geometry!r}: must be an SDRAMGeometry")
            if cycles is None:
                if clk_freq is None:
                    raise ValueError("clk_freq=None: give the clock frequency in Hz (or cycles=)")
                cycles = timing.cycles(clk_freq)
            elif not isinstance(cycles, SDRAMCycles):
                raise TypeError(f"cycles={cycles!r}: must be an SDRAMCycles")
            elif clk_freq is not None and clk_freq != cycles.clk_freq_hz:
                raise ValueError(f"clk_freq={clk_freq!r}: differs from cycles.clk_freq_hz={cycles.clk_freq_hz!r}")
            if bank_interleave is None:
                bank_interleave = 1 << geometry.col_bits
            _check_int("bank_interleave", bank_interleave, 2, 1 << geometry.col_bits)
            if bank_interleave & (bank_interleave - 1):
                raise ValueError(f"bank_interleave={bank_interleave}: must be a power of two")
            beats = -(-data_width // geometry.data_width)
            if (beats << addr_bits) > (1 << geometry.beat_bits):
                raise ValueError(
                    f"addr_bits={addr_bits}, data_width={data_width}: 2**{addr_bits} words of {beats} "
                    f"columns need {beats << addr_bits} columns, the chip has {1 << geometry.beat_bits}")
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        self.data_width, self.addr_bits, self.max_burst = data_width, addr_bits, max_burst
        self.geometry, self.cycles, self.read_delay = geometry, cycles, read_delay
        self.beats = beats
        self.bank_interleave, self.bank_hash = bank_interleave, bool(bank_hash)
        self.narrow_start, self.narrow_words, self.narrow_width = narrow_start, narrow_words, narrow_width
        self.narrow_beats = -(-narrow_width // geometry.data_width) if narrow_words else beats
        #: Read FIFO words: everything that can be in flight between READ and capture, plus slack.
        self.read_fifo_depth = cycles.cas_latency + read_delay + 4
        super().__init__({
            "port": In(ExternalMemorySignature(addr_bits, data_width, max_burst)),
            "pins": Out(SDRAMPinsSignature(geometry)),
            "ready": Out(1),
            "read_words": Out(32), "write_words": Out(32), "refreshes": Out(32), "row_misses": Out(32),
        })

    def __repr__(self):
        narrow = (f", narrow_start={self.narrow_start}, narrow_words={self.narrow_words}, "
                  f"narrow_width={self.narrow_width}") if self.narrow_words else ""
        interleave = (f", bank_interleave={self.bank_interleave}"
                      if self.bank_interleave != 1 << self.geometry.col_bits else "")
        interleave += ", bank_hash=True" if self.bank_hash else ""
        return (f"SDRAMController(data_width={self.data_width}, addr_bits={self.addr_bits}, "
                f"max_burst={self.max_burst}, read_delay={self.read_delay}{narrow}{interleave}, "
                f"cycles={self.cycles!r})")

    def beat_address(self, word: int) -> int:
        """The chip column (beat address, module docstring) of word ``word``'s first beat."""
        inside = min(max(word - self.narrow_start, 0), self.narrow_words)
        return word * self.beats - inside * (self.beats - self.narrow_beats)

    def beat_location(self, beat: int) -> tuple[int, int, int]:
        """(bank, row, column) of beat address ``beat`` on the chip (module docstring)."""
        geo, low = self.geometry, self.bank_interleave.bit_length() - 1
        col_low = beat & ((1 << low) - 1)
        row = beat >> (geo.col_bits + geo.bank_bits)
        bank = (beat >> low ^ (row if self.bank_hash else 0)) & ((1 << geo.bank_bits) - 1)
        col_high = (beat >> (low + geo.bank_bits)) & ((1 << (geo.col_bits - low)) - 1)
        return bank, row, col_high << low | col_low

    def word_beats(self, word: int) -> int:
        """Columns word ``word`` takes."""
        inside = self.narrow_start <= word < self.narrow_start + self.narrow_words
        return self.narrow_beats if inside else self.beats

    def elaborate(self, platform):
        m = Module()
        cyc, geo, port, pins = self.cycles, self.geometry, self.port, self.pins
        beats, dw, bw = self.beats, self.data_width, geo.data_width
        banks = geo.banks

        # -- pin registers: a NOP every cycle unless a command below overrides it
        def command(name):
            ras, cas, we = COMMANDS[name]
            return [pins.cs_n.eq(0), pins.ras_n.eq(ras), pins.cas_n.eq(cas), pins.we_n.eq(we)]

        m.d.sync += [pins.cke.eq(1), *command("NOP"), pins.dq_oe.eq(0)]
        # Address, bank and write data have no reset: the command pins, inhibited in reset and NOP
        # after it, say when the chip looks at them (and 31 fewer flip-flops on the reset net).
        pin_a, pin_ba, pin_dq_o = (Signal.like(getattr(pins, n), name=f"pin_{n}", reset_less=True)
                                   for n in ("a", "ba", "dq_o"))
        m.d.comb += [pins.a.eq(pin_a), pins.ba.eq(pin_ba), pins.dq_o.eq(pin_dq_o)]

        # -- command intake: one command waits in `nxt` (beat address and length precomputed)
        beat_bits = geo.beat_bits
        # Registers that only carry data (read only while a valid flag or a command says so) have no
        # reset: fewer flip-flops on the SDRAM domain's reset net, the slowest at 75 MHz on the ULX3S.
        nxt_valid = Signal()
        nxt_write = Signal(reset_less=True)
        nxt_beat = Signal(beat_bits, reset_less=True)
        nxt_left = Signal(range(self.max_burst * beats + 1), reset_less=True)
        nxt_narrow = Signal(reset_less=True)
        m.d.comb += port.cmd.ready.eq(~nxt_valid)
        addr, count = port.cmd.payload.addr, port.cmd.payload.count
        nb, n0, nw = self.narrow_beats, self.narrow_start, self.narrow_words
        if nb != beats:
            # the beat address minus the columns the narrow words before ``addr`` do not take
            in_narrow = (addr >= n0) & (addr < n0 + nw)
            inside = Mux(addr < n0, 0, Mux(in_narrow, addr - n0, nw))
            cmd_beat = _times_constant(addr, beats) - _times_constant(inside, beats - nb)
            cmd_left = Mux(in_narrow, _times_constant(count, nb), _times_constant(count, beats))
        else:
            in_narrow, cmd_beat, cmd_left = 0, _times_constant(addr, beats), _times_constant(count, beats)
        with m.If(port.cmd.valid & port.cmd.ready):
            m.d.sync += [nxt_valid.eq(count != 0), nxt_write.eq(port.cmd.payload.write),
                         nxt_beat.eq(cmd_beat), nxt_left.eq(cmd_left), nxt_narrow.eq(in_narrow)]

        # -- the current command, walked one beat per column command
        cur_valid = Signal()
        cur_write = Signal(reset_less=True)
        cur_beat = Signal(beat_bits, reset_less=True)
        cur_left = Signal.like(nxt_left)
        cur_narrow = Signal(reset_less=True)
        word_beat = Signal(range(beats))           # beat index within the current word
        last_word_beat = word_beat == (Mux(cur_narrow, nb - 1, beats - 1) if nb != beats else beats - 1)
        low = self.bank_interleave.bit_length() - 1       # column bits below the bank bits
        col = Cat(cur_beat[:low], cur_beat[low + geo.bank_bits:geo.col_bits + geo.bank_bits])
        row = cur_beat[geo.col_bits + geo.bank_bits:]

        def bank_of(beat_upper):                         # beat_upper: a beat address's bits from the bank's up
            r_ = beat_upper[geo.bank_bits + geo.col_bits - low:]
            return beat_upper[:geo.bank_bits] ^ (r_[:geo.bank_bits] if self.bank_hash else 0)

        # The current beat's bank, kept in a register beside cur_beat (set where cur_beat loads or
        # wraps into the next bank): decoding it from cur_beat put the row hash and the bank select
        # ahead of col_ok on the SDRAM clock's worst path (cur_beat -> col_ok -> do_col, 11.9 ns).
        bank = Signal(geo.bank_bits, reset_less=True)

        # -- bank state; each timer (cycles still to wait) has a registered "is 0" flag
        bank_open = Signal(banks)
        bank_row = [Signal(geo.row_bits, name=f"bank{b}_row", reset_less=True) for b in range(banks)]
        act_ok, pre_ok, col_ok = (Signal(banks, init=(1 << banks) - 1, name=n) for n in ("act_ok", "pre_ok", "col_ok"))
        rrd_ok, turn_ok = Signal(init=1), Signal(init=1)          # turn: READ → WRITE bus turnaround

        # -- open/hit of the current beat's bank, registered: computed in parallel for the three
        # addresses the next beat can have, chosen by the decision. An ACTIVE or PRECHARGE is
        # for the current beat's bank (PRECHARGE ALL: every bank) and no beat is loaded or
        # passed in its cycle, so the status it leaves is known without reading the bank state
        # back: open and a hit after an ACTIVE, closed after a PRECHARGE. (Re-reading it cost
        # the cycle after each, 2 of a row miss's 4 cycles wherever tRP and tRCD are 1 cycle —
        # the board's 37.5 MHz.)
        def status(beat_upper):
            r_ = beat_upper[geo.bank_bits + geo.col_bits - low:]
            b_ = bank_of(beat_upper)
            matches = Cat(bank_row[b] == r_ for b in range(banks))
            return bank_open.bit_select(b_, 1), (bank_open & matches).bit_select(b_, 1)

        cur_open, cur_hit = Signal(), Signal()
        sel_act_ok = act_ok.bit_select(bank, 1)
        sel_pre_ok = pre_ok.bit_select(bank, 1)
        sel_col_ok = col_ok.bit_select(bank, 1)

        # -- write data FIFO, then a two-word head buffer beside the controller: the head word stays
        # put while its beats go out, each chosen by word_beat, and leaves with the last. (A shift
        # register loaded from it put a 72-bit enable, and the sync reset Yosys made of its
        # shifted-in zeros, on the SDRAM clock's worst path; popping the FIFO itself on the last
        # beat put the column decision on the enables of its output register, placed beside its
        # block RAM 49 rows away: 12.0 ns at 100 MHz. The head buffer's slots load from write-side
        # flags only, and the FIFO pops on a registered "not full".)
        m.submodules.write_fifo = write_fifo = SyncFIFOBuffered(width=dw, depth=max(2, self.max_burst))
        m.submodules.write_head = write_head = PingPongBuffer(dw)
        m.d.comb += [write_fifo.w_data.eq(port.w.payload), write_fifo.w_en.eq(port.w.valid),
                     port.w.ready.eq(write_fifo.w_rdy),
                     write_head.i.valid.eq(write_fifo.r_rdy), write_head.i.payload.eq(write_fifo.r_data),
                     write_fifo.r_en.eq(write_head.i.ready)]
        head = write_head.o.payload
        write_beat = Cat(head, head[:beats * bw - dw]).word_select(word_beat, bw)

        # -- read FIFO with credits: a word is reserved before its first beat is issued
        depth = self.read_fifo_depth
        m.submodules.read_fifo = read_fifo = SyncFIFOBuffered(width=dw, depth=depth)
        reserved = Signal(range(depth + 1))
        m.d.comb += [port.r.valid.eq(read_fifo.r_rdy), port.r.payload.eq(read_fifo.r_data),
                     read_fifo.r_en.eq(port.r.ready)]
        taken = port.r.valid & port.r.ready

        # -- refresh bookkeeping
        refresh_running = Signal()                       # the tREFI timer runs from the first init REF
        refi = Signal(range(cyc.t_refi), init=cyc.t_refi - 1)
        owed = Signal(range(cyc.refresh_urgent + 3))      # saturates rather than wraps
        refreshing = Signal()
        tick = refresh_running & (refi == 0)
        with m.If(refresh_running):
            m.d.sync += refi.eq(Mux(refi == 0, cyc.t_refi - 1, refi - 1))

        # -- decisions (combinational), each issuing one command next cycle
        do_act, do_pre, do_pre_all, do_ref, do_col = (Signal(name=n) for n in
                                                      ("do_act", "do_pre", "do_pre_all", "do_ref", "do_col"))
        do_read = do_col & ~cur_write
        do_write = do_col & cur_write
        first_beat = word_beat == 0
        data_ok = Mux(cur_write, turn_ok & write_head.o.valid,
                      ~first_beat | (reserved < depth))
        idle = ~cur_valid & ~nxt_valid

        with m.FSM(name="state"):
            # power-up: CKE high and NOPs for t_init, then PRECHARGE ALL, REFRESHes, LOAD MODE
            wait = Signal(range(max(cyc.t_init, cyc.t_rp, cyc.t_rfc, cyc.t_mrd) + 1), init=cyc.t_init - 1)
            init_refs = Signal(range(cyc.init_refreshes + 1))
            with m.State("POWER_UP"):
                m.d.sync += wait.eq(_down(wait))
                with m.If(wait == 0):
                    m.d.sync += [*command("PRECHARGE"), pin_a.eq(1 << 10), wait.eq(cyc.t_rp - 1)]
                    m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                m.d.sync += wait.eq(_down(wait))
                with m.If(wait == 0):
                    m.d.sync += [*command("AUTO_REFRESH"), wait.eq(cyc.t_rfc - 1),
                                 init_refs.eq(init_refs + 1), refresh_running.eq(1)]
                    with m.If(init_refs == cyc.init_refreshes - 1):
                        m.next = "INIT_MODE"
            with m.State("INIT_MODE"):
                m.d.sync += wait.eq(_down(wait))
                with m.If(wait == 0):
                    m.d.sync += [*command("LOAD_MODE"), pin_ba.eq(0), pin_a.eq(mode_register(cyc.cas_latency)),
                                 wait.eq(cyc.t_mrd - 1)]
                    m.next = "INIT_WAIT"
            with m.State("INIT_WAIT"):
                m.d.sync += wait.eq(_down(wait))
                with m.If(wait == 0):
                    m.d.sync += [pins.dqm.eq(0), self.ready.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(refreshing):
                    with m.If(bank_open.any()):
                        m.d.comb += do_pre_all.eq(pre_ok.all())
                    with m.Else():
                        m.d.comb += do_ref.eq(act_ok.all())
                with m.Elif(cur_valid):
                    with m.If(cur_hit):
                        m.d.comb += do_col.eq(sel_col_ok & data_ok)
                    with m.Elif(cur_open):
                        m.d.comb += do_pre.eq(sel_pre_ok)
                    with m.Else():
                        m.d.comb += do_act.eq(sel_act_ok & rrd_ok)

        # -- refresh owed/urgent
        with m.If(tick & ~do_ref & (owed != cyc.refresh_urgent + 2)):
            m.d.sync += owed.eq(owed + 1)
        with m.Elif(do_ref & ~tick):
            m.d.sync += owed.eq(owed - 1)
        want_refresh = (owed != 0) & (idle | (owed >= cyc.refresh_urgent))
        m.d.sync += refreshing.eq(~do_ref & (refreshing | want_refresh))

        # -- issue: pins, bank state, timers
        with m.If(do_act):
            m.d.sync += [*command("ACTIVE"), pin_ba.eq(bank), pin_a.eq(row)]
        with m.If(do_pre):
            m.d.sync += [*command("PRECHARGE"), pin_ba.eq(bank), pin_a.eq(0)]
        with m.If(do_pre_all):
            m.d.sync += [*command("PRECHARGE"), pin_a.eq(1 << 10)]
        with m.If(do_ref):
            m.d.sync += command("AUTO_REFRESH")
        with m.If(do_col):
            m.d.sync += [pin_ba.eq(bank), pin_a.eq(col)]
            with m.If(cur_write):
                m.d.sync += [*command("WRITE"), pins.dq_oe.eq(1), pin_dq_o.eq(write_beat)]
                m.d.comb += write_head.o.ready.eq(last_word_beat)
            with m.Else():
                m.d.sync += command("READ")

        for b in range(banks):
            here = bank == b
            pre_here = do_pre_all | (do_pre & here)
            _countdown(m, f"bank{b}_t_act", act_ok[b], [(do_ref, cyc.t_rfc, False), (do_act & here, cyc.t_rc, False),
                                                         (pre_here, cyc.t_rp, True)])
            _countdown(m, f"bank{b}_t_pre", pre_ok[b], [(do_act & here, cyc.t_ras, False),
                                                         (do_write & here, cyc.t_wr, True)])
            _countdown(m, f"bank{b}_t_col", col_ok[b], [(do_act & here, cyc.t_rcd, False)])
            with m.If(do_act & here):
                m.d.sync += [bank_open[b].eq(1), bank_row[b].eq(row)]
            with m.Elif(pre_here):
                m.d.sync += bank_open[b].eq(0)
        _countdown(m, "t_rrd", rrd_ok, [(do_act, cyc.t_rrd, False)])
        _countdown(m, "t_turn", turn_ok, [(do_read, cyc.cas_latency + 2, False)])

        # -- advance through the command; load the next one as the last beat goes out
        last_beat = do_col & (cur_left == 1)
        load = (~cur_valid | last_beat) & nxt_valid
        wrap = do_col & cur_beat[:low].all()              # the next beat is in the next bank
        upper = cur_beat[low:]
        # upper + 1 kept in a register beside cur_beat: the wrap candidate's adder sat on the
        # controller's critical path (cur_beat -> carry chain -> row compare -> cur_hit, 11.5 ns).
        upper_next = Signal.like(upper, init=1, reset_less=True)
        candidates = {"load": status(nxt_beat[low:]), "wrap": status(upper_next), "stay": status(upper)}
        with m.If(do_act):
            m.d.sync += [cur_open.eq(1), cur_hit.eq(1)]
        with m.Elif(do_pre | do_pre_all):
            m.d.sync += [cur_open.eq(0), cur_hit.eq(0)]
        with m.Elif(load):
            m.d.sync += [cur_open.eq(candidates["load"][0]), cur_hit.eq(candidates["load"][1])]
        with m.Elif(wrap):
            m.d.sync += [cur_open.eq(candidates["wrap"][0]), cur_hit.eq(candidates["wrap"][1])]
        with m.Else():
            m.d.sync += [cur_open.eq(candidates["stay"][0]), cur_hit.eq(candidates["stay"][1])]
        with m.If(do_col):
            m.d.sync += [cur_beat.eq(cur_beat + 1), cur_left.eq(cur_left - 1),
                         word_beat.eq(Mux(last_word_beat, 0, word_beat + 1))]
        with m.If(wrap):
            m.d.sync += [upper_next.eq(upper_next + 1), bank.eq(bank_of(upper_next))]
        with m.If(load):
            m.d.sync += [cur_valid.eq(1), cur_write.eq(nxt_write), cur_beat.eq(nxt_beat), upper_next.eq(nxt_beat[low:] + 1),
                         bank.eq(bank_of(nxt_beat[low:])),
                         cur_left.eq(nxt_left), cur_narrow.eq(nxt_narrow), word_beat.eq(0), nxt_valid.eq(0)]
        with m.Elif(last_beat):
            m.d.sync += cur_valid.eq(0)

        # -- read capture: CL + read_delay cycles after the READ is on the pins
        # (each READ's word-end and narrow flags travel beside it)
        capture_at = cyc.cas_latency + self.read_delay
        in_flight, ends_flight, narrow_flight = (Signal(capture_at + 1, name=n) for n in
                                                 ("in_flight", "ends_flight", "narrow_flight"))
        m.d.sync += [in_flight.eq(Cat(do_read, in_flight[:-1])),
                     ends_flight.eq(Cat(do_read & last_word_beat, ends_flight[:-1])),
                     narrow_flight.eq(Cat(cur_narrow, narrow_flight[:-1]))]
        capture = in_flight[capture_at]
        assembly = Signal(beats * bw, reset_less=True)
        assembly_next = Cat(assembly[bw:], pins.dq_i)
        word_done = capture & ends_flight[capture_at]
        with m.If(capture):
            m.d.sync += assembly.eq(assembly_next)
        word_in = assembly_next[:dw]
        if nb != beats:        # a narrow word's nb beats are the top ones; the bits above them are 0
            word_in = Mux(narrow_flight[capture_at], assembly_next[(beats - nb) * bw:][:min(dw, nb * bw)], word_in)
        m.d.comb += [read_fifo.w_data.eq(word_in), read_fifo.w_en.eq(word_done)]
        m.d.sync += reserved.eq(reserved + (do_read & first_beat) - taken)

        # -- statistics
        m.d.sync += [self.read_words.eq(self.read_words + word_done),
                     self.write_words.eq(self.write_words + (do_write & last_word_beat)),
                     self.refreshes.eq(self.refreshes + do_ref),
                     self.row_misses.eq(self.row_misses + do_act)]
        return m


# The engine's bank map (module docstring): measured at 37.5 MHz with benchmarks/engine_throughput.py,
# LeNet-5 b128 55,678,306 -> 52,351,055 cycles a step against the plain map, the MLP 5,319,062 ->
# 5,285,803; interleave 4 without the hash helped fc1 but cost CONV_ERR layer 1 (54,287,410, MLP
# 5,576,985 worse).
ENGINE_BANK_INTERLEAVE = 64


def engine_sdram(config, clk_freq, *, read_delay: int = 0) -> SDRAMController:
    """The controller for an engine configuration's external memory
    (:class:`hw.engine.config.EngineConfig`): words of ``external_width`` bits, an address as wide as
    ``external_depth`` needs (the engine's port address is the ISA's, wider), the error region and
    the stored weights' region after it narrow (``external_error_words``, where the compiler puts
    only error words, 8·L bits, zero-extended to the external word; a weight word is L·kG bits,
    :mod:`hw.engine.weight_store` reads and writes no more), banks interleaved every 64 columns and
    hashed with the row. A memory the chip cannot hold is refused, naming the sizes."""
    addr_bits = max(1, (config.external_depth - 1).bit_length())
    narrow_words = config.external_error_words + config.external_weight_words
    return SDRAMController(config.external_width, addr_bits, clk_freq, read_delay=read_delay,
                           narrow_start=config.external_error_base, narrow_words=narrow_words,
                           narrow_width=config.lanes * max(8, config.wage.kG),
                           bank_interleave=ENGINE_BANK_INTERLEAVE, bank_hash=True)


def connect_engine_port(m: Module, ext, port) -> None:
    """Connect the engine's external-memory port ``ext`` to a controller's ``port`` whose address is
    narrower: the low ``addr_bits`` of each command's address are kept.

    The engine reads and writes only its ``external_depth`` words (a pattern's padding beats, whose
    data it zeroes, are read from on-chip word 0: :class:`hw.engine.feeder.PatternReader`), so the
    dropped high bits are 0; ``tests/test_boards_sdram_system.py`` checks every command of a
    training run against the words."""
    m.d.comb += [port.cmd.payload.addr.eq(ext.cmd.payload.addr), port.cmd.payload.count.eq(ext.cmd.payload.count),
                 port.cmd.payload.write.eq(ext.cmd.payload.write),
                 port.cmd.valid.eq(ext.cmd.valid), ext.cmd.ready.eq(port.cmd.ready)]
    wiring.connect(m, ext.w, port.w)
    wiring.connect(m, port.r, ext.r)


def sdram_clock_domain(clk_freq: float, sdram_freq: float) -> str:
    """The SDRAM side's clock domain: ``sync`` when it runs on the engine's clock, else ``sdram``."""
    return "sync" if sdram_freq == clk_freq else "sdram"


def clock_domain_freqs(clk_freq: float, sdram_domain: str, sdram_freq: float) -> dict[str, float]:
    """Each clock domain's frequency in Hz: ``sync`` (the engine's), and the SDRAM's own domain if any."""
    return {"sync": clk_freq, **({sdram_domain: sdram_freq} if sdram_domain != "sync" else {})}


#: Reset-less registers between the SDRAM domain's reset and each of its consumers' (the controller's,
#: the clock-domain crossing's): each consumer's reset is a register of its own, which timing-driven
#: placement puts among the flip-flops it resets, and the reset may take a cycle per hop to cross the
#: die. (Wirelength-only placement does not use the hops: a register costs the same wire anywhere
#: between its driver and its loads. It put the domain's one reset register 17 ns of routing from the
#: controller, the chains' merged last register 13.4 ns, past the 13.3 ns of 75 MHz.) Chains of equal
#: length keep the consumers leaving reset on the same cycle.
RESET_STAGES = 2


def local_reset_domain(m: Module, domain: str, name: str, *, stages: int = RESET_STAGES,
                       inverted: bool = False) -> str:
    """Define in ``m`` a local domain ``name`` on ``domain``'s clock whose reset is ``domain``'s
    delayed by ``stages`` reset-less registers (asserted, as at power-on, until they fill);
    returns ``name``.

    ``inverted`` keeps the reset inverted along the chain: Yosys merges flip-flops with the same
    input (a ``keep`` attribute does not stop it), so two chains from one reset must differ, or
    they become one register again, placed by neither consumer."""
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages={stages!r}: must be an integer of at least 1")
    m.domains += ClockDomain(name, local=True)
    rst = ~ResetSignal(domain) if inverted else ResetSignal(domain)
    for i in range(stages):
        stage = Signal(init=int(not inverted), reset_less=True, name=f"{name}_rst{i}")
        m.d[domain] += stage.eq(rst)
        rst = stage
    m.d.comb += [ClockSignal(name).eq(ClockSignal(domain)), ResetSignal(name).eq(~rst if inverted else rst)]
    return name


def clock_domain_side(m: Module, domain: str, *, clk=None, rst=None, name: str = "sdram_side") -> Module:
    """Where logic that ``domain`` clocks goes, written in ``sync``: ``m`` itself when ``domain`` is
    ``sync``, else a new submodule ``name`` of ``m`` in ``domain``'s clock with a reset of its own
    (:func:`local_reset_domain`, domain ``{name}_local``). With ``clk`` and ``rst``, ``m`` also
    defines ``domain``, its clock and reset driven from them (a simulation wrapper's ports); without,
    a parent defines it (the board top, from its PLL)."""
    if domain == "sync":
        return m
    if clk is not None:
        m.domains += ClockDomain(domain)
        m.d.comb += [ClockSignal(domain).eq(clk), ResetSignal(domain).eq(rst)]
    side = Module()
    m.submodules[name] = DomainRenamer({"sync": local_reset_domain(m, domain, f"{name}_local")})(side)
    return side


def connect_engine_sdram(m: Module, ext, controller: SDRAMController, domain: str) -> None:
    """The engine's external-memory port ``ext`` (domain ``sync``) to ``controller``'s port: directly
    when the controller runs in ``sync``, through an :class:`~hw.engine.extcdc.ExternalMemoryCDC`
    (submodule ``sdram_cdc``) when it runs in ``domain``, a clock of its own: its memory side in
    domain ``{domain}_cdc``, with a reset of its own (:func:`local_reset_domain`, inverted along its
    chain so that it stays apart from the controller's)."""
    if domain == "sync":
        connect_engine_port(m, ext, controller.port)
        return
    m.submodules.sdram_cdc = cdc = ExternalMemoryCDC(controller.addr_bits, controller.data_width,
                                                     controller.max_burst,
                                                     memory_domain=local_reset_domain(m, domain, f"{domain}_cdc",
                                                                                      inverted=True))
    connect_engine_port(m, ext, cdc.initiator)
    wiring.connect(m, cdc.target, controller.port)
