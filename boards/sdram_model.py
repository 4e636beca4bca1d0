"""A behavioural SDR SDRAM (MT48LC16M16A2 class) that checks every timing rule, for simulation.

:class:`SDRAMModel` sits on the chip side of :class:`boards.sdram.SDRAMPinsSignature` (``pins`` is
``In``: it drives ``dq_i``). Like :mod:`hw.engine.extmem_model` it is plain Amaranth, written to be
simulated (the Amaranth simulator now, Verilator later), not synthesised for an FPGA: no Python
callbacks, the storage is a :class:`amaranth.lib.memory.Memory` left without initial contents in
Verilog (:data:`hw.engine.extmem_model.NO_INIT_ATTRIBUTE`).

Behaviour
---------
A command on the pins in cycle ``c`` (``cs_n`` low, ``cke`` high) takes effect at the end of
``c``. Decoded: NOP/INHIBIT, ACTIVE, READ, WRITE, PRECHARGE (one bank, or all with A10),
AUTO REFRESH, LOAD MODE REGISTER. The model supports burst length 1 only (what the controller
programs); BURST TERMINATE and auto-precharge (A10 on READ/WRITE) are flagged as UNSUPPORTED.

* **Storage**: only rows below ``2**stored_row_bits`` and columns below ``2**stored_col_bits`` of
  each bank are stored (a simulation needs a few rows, not 32 MB); an ACTIVE of a higher row or a
  column command to a higher column is the NOT_STORED violation and does not write.
* **WRITE** stores ``dq_o`` in the open row, byte lanes whose DQM is high masked (DQM latency 0).
* **READ** drives the word on ``dq_i`` in cycle ``c + CL`` (CL from the mode register), lanes
  whose DQM was high in cycle ``c + CL - 2`` left undriven (DQM read latency 2; an undriven lane
  reads as 0 here, standing for high impedance).

Checks
------
Each command is checked against the rules below, every one from the same
:class:`boards.sdram.SDRAMCycles` as the controller's ("``t`` cycles between X and Y": Y at least
``t`` cycles after X). The first violation sets the sticky ``violation`` output, its
:class:`SDRAMViolation` in ``violation_code`` and the cycle (counted from reset, from 0) in
``violation_cycle``; when several rules break in one cycle the lowest code wins.

* POWER_UP: a command before ``t_init`` cycles. INIT_ORDER: the init sequence must be PRECHARGE
  ALL, then at least ``init_refreshes`` AUTO REFRESHes, then LOAD MODE REGISTER; no ACTIVE, READ or
  WRITE before it is done. CKE_LOW: CKE falls after the first command (no power-down/self refresh).
* MODE_REGISTER: burst length not 1, CL not 2/3 or below ``cycles.cas_latency``, reserved bits set.
* T_MRD, T_RFC: any command within ``t_mrd`` of LOAD MODE / ``t_rfc`` of AUTO REFRESH.
* BANKS_NOT_IDLE: AUTO REFRESH or LOAD MODE with a bank open. T_RP: ACTIVE, AUTO REFRESH or LOAD
  MODE within ``t_rp`` of a PRECHARGE of the bank(s) concerned (a PRECHARGE of an idle bank counts too:
  conservative).
* BANK_OPEN: ACTIVE to an open bank. T_RC: ACTIVE within ``t_rc`` of the bank's last ACTIVE.
  T_RRD: within ``t_rrd`` of any ACTIVE.
* BANK_CLOSED: READ/WRITE to an idle bank. T_RCD: within ``t_rcd`` of the bank's ACTIVE. (A
  READ/WRITE meant for another row cannot be seen on the pins, which carry no row then: it shows as
  wrong data in the test's comparison.)
* T_RAS: PRECHARGE of an open bank within ``t_ras`` of its ACTIVE. T_WR: within ``t_wr`` of its
  last WRITE. T_RAS_MAX: a bank open for more than ``t_ras_max`` cycles.
* REFRESH_LATE — the refresh rule: from the first AUTO REFRESH on the model keeps a deadline. The
  first sets it ``(refresh_postpone + 1) · t_refi`` cycles ahead, every later one moves it
  ``t_refi`` later (at most ``(refresh_postpone + 9) · t_refi`` ahead: 8 may be pulled in, as
  JEDEC allows); a cycle at the deadline without an AUTO REFRESH is late. So over any stretch the
  refreshes keep up with one per ``t_refi`` except for at most ``refresh_postpone`` owed ones, and
  with nothing banked two refreshes are at most ``(refresh_postpone + 1) · t_refi`` apart.
* BUS_CONTENTION: ``dq_oe`` in a cycle the model drives read data. WRITE_DATA_UNDRIVEN: a WRITE
  without ``dq_oe``. NOT_STORED: see Storage.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from boards.sdram import SDRAMCycles, SDRAMGeometry, SDRAMPinsSignature
from hw.engine.extmem_model import NO_INIT_ATTRIBUTE

__all__ = ["SDRAMModel", "SDRAMViolation"]


class SDRAMViolation(enum.Enum, shape=5):
    """Which rule the model saw broken first (lower value wins within a cycle)."""
    NONE = 0
    POWER_UP = 1
    INIT_ORDER = 2
    CKE_LOW = 3
    UNSUPPORTED = 4
    MODE_REGISTER = 5
    T_MRD = 6
    T_RFC = 7
    BANKS_NOT_IDLE = 8
    T_RP = 9
    BANK_OPEN = 10
    T_RC = 11
    T_RRD = 12
    BANK_CLOSED = 13
    T_RCD = 14
    T_RAS = 15
    T_WR = 16
    T_RAS_MAX = 17
    REFRESH_LATE = 18
    BUS_CONTENTION = 19
    WRITE_DATA_UNDRIVEN = 20
    NOT_STORED = 21


class SDRAMModel(wiring.Component):
    """A checking SDR SDRAM (see the module docstring).

    Parameters
    ----------
    cycles : SDRAMCycles
        The timing to check against (the same object the controller was built with, or the
        correct one when the controller's is deliberately wrong).
    geometry : SDRAMGeometry
    stored_row_bits, stored_col_bits : int
        Rows and columns per bank actually stored (``2**bits``); default 3 rows bits (8 rows) and
        all columns.
    """

    def __init__(self, cycles: SDRAMCycles, geometry: SDRAMGeometry = SDRAMGeometry(), *,
                 stored_row_bits: int = 3, stored_col_bits: int | None = None):
        try:
            if not isinstance(cycles, SDRAMCycles):
                raise TypeError(f"cycles={cycles!r}: must be an SDRAMCycles")
            if not isinstance(geometry, SDRAMGeometry):
                raise TypeError(f"geometry={geometry!r}: must be an SDRAMGeometry")
            if stored_col_bits is None:
                stored_col_bits = geometry.col_bits
            for name, value, high in (("stored_row_bits", stored_row_bits, geometry.row_bits),
                                      ("stored_col_bits", stored_col_bits, geometry.col_bits)):
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
                    raise ValueError(f"{name}={value!r}: must be an integer in 0..{high}")
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        self.cycles, self.geometry = cycles, geometry
        self.stored_row_bits, self.stored_col_bits = stored_row_bits, stored_col_bits
        super().__init__({
            "pins": In(SDRAMPinsSignature(geometry)),
            "violation": Out(1), "violation_code": Out(SDRAMViolation), "violation_cycle": Out(32),
            "initialized": Out(1), "refreshes": Out(32),
        })

    def __repr__(self):
        return (f"SDRAMModel({self.cycles!r}, {self.geometry!r}, stored_row_bits={self.stored_row_bits}, "
                f"stored_col_bits={self.stored_col_bits})")

    def elaborate(self, platform):
        m = Module()
        cyc, geo, p = self.cycles, self.geometry, self.pins
        banks, bw = geo.banks, geo.data_width
        V = SDRAMViolation

        # -- command decode
        selected = ~p.cs_n & p.cke
        ras, cas, we = ~p.ras_n, ~p.cas_n, ~p.we_n
        any_cmd = selected & (ras | cas | we)
        is_act = selected & ras & ~cas & ~we
        is_read = selected & ~ras & cas & ~we
        is_write = selected & ~ras & cas & we
        is_bst = selected & ~ras & ~cas & we
        is_pre = selected & ras & ~cas & we
        is_ref = selected & ras & cas & ~we
        is_lmr = selected & ras & cas & we
        is_column = is_read | is_write
        bank = p.ba
        a10 = p.a[10]
        row = p.a[:geo.row_bits]
        col = p.a[:geo.col_bits]

        # -- "cycles since" counters, saturating; reset value = long ago
        def since(name, limit, event, init=None):
            s = Signal(range(limit + 1), name=name, init=limit if init is None else init)
            m.d.sync += s.eq(Mux(event, 1, Mux(s == limit, limit, s + 1)))
            return s

        pre_hits = [is_pre & (a10 | (bank == b)) for b in range(banks)]
        bank_open = Signal(banks)
        open_row = [Signal(geo.row_bits, name=f"bank{b}_row") for b in range(banks)]
        since_act = [since(f"bank{b}_since_act", max(cyc.t_ras_max + 1, cyc.t_rc, cyc.t_rcd, cyc.t_ras),
                           is_act & (bank == b)) for b in range(banks)]
        since_pre = [since(f"bank{b}_since_pre", cyc.t_rp, pre_hits[b]) for b in range(banks)]
        since_write = [since(f"bank{b}_since_write", cyc.t_wr, is_write & (bank == b)) for b in range(banks)]
        since_act_any = since("since_act_any", cyc.t_rrd, is_act)
        since_ref = since("since_ref", cyc.t_rfc, is_ref)
        since_lmr = since("since_lmr", cyc.t_mrd, is_lmr)
        since_reset = since("since_reset", cyc.t_init, Const(0), init=0)

        for b in range(banks):
            with m.If(is_act & (bank == b)):
                m.d.sync += [bank_open[b].eq(1), open_row[b].eq(row)]
            with m.Elif(pre_hits[b]):
                m.d.sync += bank_open[b].eq(0)

        sel_open = bank_open.bit_select(bank, 1)
        sel_row = Signal(geo.row_bits)
        sel_since_act = Signal.like(since_act[0])
        sel_since_pre = Signal.like(since_pre[0])
        with m.Switch(bank):
            for b in range(banks):
                with m.Case(b):
                    m.d.comb += [sel_row.eq(open_row[b]), sel_since_act.eq(since_act[b]),
                                 sel_since_pre.eq(since_pre[b])]

        # -- init sequence and mode register
        init_state = Signal(range(3))            # 0: wait for PRECHARGE ALL, 1: refreshing, 2: ready
        init_refs = Signal(range(cyc.init_refreshes + 1))
        mode_cl = Signal(2, init=3)
        started = Signal()
        mode_cl_new = p.a[4:7]
        mode_bad = ((p.a[:3] != 0) | (p.a[7:9] != 0) | (p.a[10:] != 0) | (bank != 0)
                    | ~((mode_cl_new == 2) | (mode_cl_new == 3)) | (mode_cl_new < cyc.cas_latency))
        enough_refs = init_refs == cyc.init_refreshes
        init_bad = (((is_act | is_column) & (init_state != 2))
                    | (is_ref & (init_state == 0))
                    | (is_lmr & ((init_state == 0) | ((init_state == 1) & ~enough_refs))))
        with m.If(any_cmd):
            m.d.sync += started.eq(1)
        with m.If(is_pre & a10 & (init_state == 0)):
            m.d.sync += init_state.eq(1)
        with m.If(is_ref & (init_state == 1) & ~enough_refs):
            m.d.sync += init_refs.eq(init_refs + 1)
        with m.If(is_lmr & ~mode_bad):
            m.d.sync += mode_cl.eq(mode_cl_new)
            with m.If((init_state == 1) & enough_refs):
                m.d.sync += init_state.eq(2)
        m.d.comb += self.initialized.eq(init_state == 2)

        # -- refresh deadline (see "REFRESH_LATE" in the module docstring)
        t, post = cyc.t_refi, cyc.refresh_postpone
        cap = (post + 9) * t - 1
        armed = Signal()
        refresh_left = Signal(range(cap + 1))
        moved = Signal(range(cap + t + 1))
        m.d.comb += moved.eq(refresh_left + (t - 1))
        with m.If(is_ref):
            m.d.sync += [armed.eq(1), refresh_left.eq(Mux(armed, Mux(moved > cap, cap, moved), (post + 1) * t - 1)),
                         self.refreshes.eq(self.refreshes + 1)]
        with m.Elif(armed & (refresh_left != 0)):
            m.d.sync += refresh_left.eq(refresh_left - 1)

        # -- storage: rows/columns below the stored limits only
        srb, scb = self.stored_row_bits, self.stored_col_bits
        stored = Signal()
        m.d.comb += stored.eq((sel_row[srb:] == 0) & (col[scb:] == 0))
        memory = Memory(shape=bw, depth=banks << (srb + scb), init=[], attrs={NO_INIT_ATTRIBUTE: 1})
        m.submodules.memory = self.memory = memory        # (tests read the stored columns)
        write_port = memory.write_port(granularity=8)
        read_port = memory.read_port(domain="sync")
        index = Cat(col[:scb], sel_row[:srb], bank)
        m.d.comb += [write_port.addr.eq(index), write_port.data.eq(p.dq_o), read_port.addr.eq(index),
                     write_port.en.eq(Mux(is_write & sel_open & stored & p.dq_oe, ~p.dqm, 0))]

        # -- read pipeline: array data in c+1, driven in c+CL with DQM from c+CL-2
        read_1 = Signal()
        read_2, read_3 = Signal(), Signal()
        data_2, data_3 = Signal(bw), Signal(bw)
        dqm_1, dqm_2 = Signal(geo.bytes), Signal(geo.bytes)
        m.d.sync += [read_1.eq(is_read & sel_open), read_2.eq(read_1), read_3.eq(read_2),
                     data_2.eq(read_port.data), data_3.eq(data_2), dqm_1.eq(p.dqm), dqm_2.eq(dqm_1)]
        out_valid = Mux(mode_cl == 2, read_2, read_3)
        out_data = Mux(mode_cl == 2, data_2, data_3)
        lanes = Signal(geo.bytes)
        m.d.comb += lanes.eq(Mux(out_valid, ~dqm_2, 0))
        driving = lanes.any()
        m.d.comb += p.dq_i.eq(out_data & Cat(lane.replicate(8) for lane in lanes))

        # -- the rules, in priority order
        def any_bank(f):
            return Cat(f(b) for b in range(banks)).any()

        checks = [
            (any_cmd & (since_reset < cyc.t_init), V.POWER_UP),
            (init_bad, V.INIT_ORDER),
            (~p.cke & started, V.CKE_LOW),
            (is_bst | (is_column & a10), V.UNSUPPORTED),
            (is_lmr & mode_bad, V.MODE_REGISTER),
            (any_cmd & (since_lmr < cyc.t_mrd), V.T_MRD),
            (any_cmd & (since_ref < cyc.t_rfc), V.T_RFC),
            ((is_ref | is_lmr) & bank_open.any(), V.BANKS_NOT_IDLE),
            ((is_act & (sel_since_pre < cyc.t_rp))
             | ((is_ref | is_lmr) & any_bank(lambda b: since_pre[b] < cyc.t_rp)), V.T_RP),
            (is_act & sel_open, V.BANK_OPEN),
            (is_act & (sel_since_act < cyc.t_rc), V.T_RC),
            (is_act & (since_act_any < cyc.t_rrd), V.T_RRD),
            (is_column & ~sel_open, V.BANK_CLOSED),
            (is_column & (sel_since_act < cyc.t_rcd), V.T_RCD),
            (any_bank(lambda b: pre_hits[b] & bank_open[b] & (since_act[b] < cyc.t_ras)), V.T_RAS),
            (any_bank(lambda b: pre_hits[b] & bank_open[b] & (since_write[b] < cyc.t_wr)), V.T_WR),
            (any_bank(lambda b: bank_open[b] & (since_act[b] > cyc.t_ras_max)), V.T_RAS_MAX),
            (armed & (refresh_left == 0) & ~is_ref, V.REFRESH_LATE),
            (p.dq_oe & driving, V.BUS_CONTENTION),
            (is_write & ~p.dq_oe, V.WRITE_DATA_UNDRIVEN),
            ((is_act & (row[srb:] != 0)) | (is_column & (col[scb:] != 0)), V.NOT_STORED),
        ]
        cycle = Signal(32)
        m.d.sync += cycle.eq(cycle + 1)
        with m.If(~self.violation):
            for i, (condition, code) in enumerate(checks):
                with (m.If if i == 0 else m.Elif)(condition):
                    m.d.sync += [self.violation.eq(1), self.violation_code.eq(code),
                                 self.violation_cycle.eq(cycle)]
        return m
