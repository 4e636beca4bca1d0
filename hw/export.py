"""The engine as plain Verilog plus a JSON description of its ports, parameters and memory map.

:func:`export_verilog` converts :class:`hw.engine.engine.Engine` (``amaranth.back.verilog``, one
top module ``name`` with every port of its signature) and writes, into ``out_dir``:

* ``{name}.v`` — the Verilog: the top module and its submodules (escaped names ``\\{name}.sub``).
  With ``target="ecp5"`` it instantiates vendor cells (DP16KD, MULT18X18D) that it does not define;
  another flow must supply them (Lattice's libraries, or the behavioural models of
  ``sim/ecp5_models.py`` for simulation). With ``target="generic"`` it is self-contained.
* ``{name}.json`` — the description below. Nothing in it is assumed: the ports come from the
  component's signature and are checked against the emitted module header (name, direction,
  width; every header port described, every described port present), the clock and reset from the
  ports Amaranth added for the ``sync`` domain and their use in the emitted code, the primitives
  from the cell types the Verilog instantiates without defining. A mismatch raises
  :class:`ExportError` and nothing is written.

JSON keys (``"format": 1``; a key is never dropped, absent things are ``null`` or empty):

``format``            1 (bumped when a key changes meaning or goes).
``module``            top module name (``name``).
``verilog``           file name of the Verilog, relative to the JSON file.
``generator``         ``"hw.export.export_verilog"``; ``amaranth_version``: the Amaranth that converted it.
``target``            ``config.target`` ("generic" or "ecp5").
``primitives``        sorted cell types the Verilog instantiates but does not define (vendor
                      primitives the user must supply); ``[]`` for "generic".
``primitive_instances``  cell type -> number of instances.
``simulation_models`` ``"sim/ecp5_models.py"`` (behavioural Verilog models of the primitives, see
                      :func:`sim.ecp5_models.ecp5_model_files`) when ``primitives`` is non-empty, else ``null``.
``clock``             ``{"port": "clk", "edge": "rising", "domain": "sync"}``.
``reset``             ``{"port": "rst", "polarity": "active-high", "synchronous": true, "domain": "sync"}``;
                      hold it for at least one rising clock edge after power-up.
``ports``             every port of the module header, in signature order then clock and reset:
                      ``{"name"`` (as in the Verilog), ``"direction"`` ("input"/"output"),
                      ``"width"``, ``"interface"`` (the signature path without the last element,
                      dotted: "host_in", "ext.cmd"; ``null`` for clock and reset), ``"role"``
                      ("valid"/"ready"/"payload" for stream ports, "clock"/"reset"),
                      ``"fields"``}. Amaranth 0.5 does not split a struct payload: it is *one*
                      port (``host_in__payload``, 33 bits) whose bits are the fields, so
                      ``fields`` lists ``{"name", "offset", "width", "signed"}`` (offset = least
                      significant bit within the port; ``data`` is bits 0–31, ``last`` bit 32);
                      ``null`` for a port that is a plain number. Port names are the signature
                      path joined by ``__`` (``ext__cmd__payload``).
``interfaces``        name -> description. ``host_in``/``host_out``: ``{"kind":
                      "amaranth.lib.stream", "direction"`` (data into or out of the engine),
                      ``"ports": {"valid", "ready", "payload"}`` (Verilog port names),
                      ``"always_valid"``, ``"always_ready"``, ``"payload_width"``,
                      ``"payload_layout": {"data": 32, "last": 1}`` (field -> width; ``null`` for a
                      plain payload), ``"packet_format": "hw/engine/protocol.py"`` (its codes are
                      under the top-level key ``protocol``)}. ``ext`` (only when
                      ``config.external_depth`` > 0): ``{"kind": "external-memory",
                      "documentation": "hw/engine/extmem.py", "addr_bits", "data_width",
                      "max_burst", "depth"`` (words the memory must hold),
                      ``"streams": {"cmd", "w", "r"}`` (each a stream description as above;
                      ``cmd`` payload {addr, count, write})}.
``protocol``          the host packet format: ``"source"`` (``hw/engine/protocol.py``),
                      ``"magic"``, ``"format_version"``, ``"commands"``, ``"targets"``,
                      ``"statuses"`` (name -> numeric code), ``"arguments"`` (command ->
                      argument words), ``"counters"`` and ``"ident"`` (word names in response
                      order), ``"ident_values"`` (what this build answers to IDENT).
``parameters``        ``{"config"`` (:meth:`EngineConfig.to_dict`; :meth:`EngineConfig.from_dict`
                      rebuilds the config), ``"fingerprint"`` (:meth:`EngineConfig.fingerprint`,
                      the IDENT word), ``"derived": {"lanes", "batch", "external_width",
                      "data_space", "weight_space", "external_depth", "max_reduction",
                      "folds_input", "addr_bits", "machine_words", "mask_words"}}`` (a
                      program image is delta records: ``mask_words`` of mask, then the carried
                      words of the ``machine_words``-word record, :mod:`hw.engine.encoding`).
``memory_map``        protocol target name -> ``{"code"`` (the target's number), ``"range": [0,
                      n)`` (valid WRITE/READ addresses, in items), ``"item_bits"``,
                      ``"item_words"`` (32-bit words per item on the host stream, least
                      significant first), ``"regions"``: ``[{"range": [a, b)`` (addresses),
                      ``"location"`` ("on-chip" or "external"), ``"memory"`` (which one), and for
                      external regions ``"external_word"`` (external word of address ``a``;
                      address a + i is external word external_word + i) and
                      ``"external_word_bits"`` (the item sits in the low item_bits bits)}]``}.
                      ACT and ERR addresses from ``data_words`` on are the same external words
                      (activations and errors share them); WEIGHTS from ``weight_words`` on are
                      external words ``external_words`` + … (:class:`EngineConfig`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog as verilog_backend
from amaranth.hdl import Shape
from amaranth.lib import data, stream
from amaranth.lib.wiring import In

from hw.engine import protocol
from hw.engine.config import EngineConfig
from hw.engine.encoding import MACHINE_WORDS, MASK_WORDS
from hw.engine.engine import Engine
from hw.engine.extmem import ExternalMemorySignature
from hw.engine.isa import ADDR_BITS

__all__ = ["export_verilog", "describe", "ExportResult", "ExportError", "verilog_module_ports",
           "verilog_primitives", "FORMAT"]

#: Version of the JSON description (its ``"format"`` key).
FORMAT = 1

SIMULATION_MODELS = "sim/ecp5_models.py"
PACKET_FORMAT = "hw/engine/protocol.py"
EXTMEM_DOC = "hw/engine/extmem.py"

# IEEE 1364-2005 and 1800-2017 reserved words: none may name the module (Verilator reads .v files
# as SystemVerilog by default, so `logic` is as fatal as `module`).
_KEYWORDS = frozenset("""
accept_on alias always always_comb always_ff always_latch and assert assign assume automatic before begin bind
bins binsof bit break buf bufif0 bufif1 byte case casex casez cell chandle checker class clocking cmos config
const constraint context continue cover covergroup coverpoint cross deassign default defparam design disable
dist do edge else end endcase endchecker endclass endclocking endconfig endfunction endgenerate endgroup
endinterface endmodule endpackage endprimitive endprogram endproperty endspecify endsequence endtable endtask
enum event eventually expect export extends extern final first_match for force foreach forever fork forkjoin
function generate genvar global highz0 highz1 if iff ifnone ignore_bins illegal_bins implements implies import
incdir include initial inout input inside instance int integer interconnect interface intersect join join_any
join_none large let liblist library local localparam logic longint macromodule matches medium modport module
nand negedge nettype new nexttime nmos nor noshowcancelled not notif0 notif1 null or output package packed
parameter pmos posedge primitive priority program property protected pull0 pull1 pulldown pullup
pulsestyle_ondetect pulsestyle_onevent pure rand randc randcase randsequence rcmos real realtime ref reg
reject_on release repeat restrict return rnmos rpmos rtran rtranif0 rtranif1 s_always s_eventually s_nexttime
s_until s_until_with scalared sequence shortint shortreal showcancelled signed small soft solve specify
specparam static string strong strong0 strong1 struct super supply0 supply1 sync_accept_on sync_reject_on
table tagged task this throughout time timeprecision timeunit tran tranif0 tranif1 tri tri0 tri1 triand trior
trireg type typedef union unique unique0 unsigned until until_with untyped use uwire var vectored virtual void
wait wait_order wand weak weak0 weak1 while wildcard wire with within wor xnor xor
""".split())

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# An identifier as Yosys writes it: simple, or escaped (backslash up to the next whitespace).
_VID = r"(?:\\\S+|[A-Za-z_][A-Za-z0-9_$]*)"
_MODULE = re.compile(r"^module\s+(" + _VID + r")\s*\(([^;]*)\)\s*;", re.M)
_DECL = re.compile(r"^\s*(input|output|inout)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?(?:\[(\d+):(\d+)\]\s*)?(" + _VID
                   + r")\s*;", re.M)
_INSTANCE = re.compile(r"^\s*(" + _VID + r")\s+(?:#\s*\(|" + _VID + r"\s*\()", re.M)


class ExportError(RuntimeError):
    """The emitted Verilog does not match what the description would say (nothing is written)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_verilog` wrote: the two files and the description (the JSON's content)."""
    verilog_path: Path
    json_path: Path
    description: dict = dataclasses.field(hash=False, compare=False, repr=False)


def _unescape(name: str) -> str:
    return name[1:] if name.startswith("\\") else name


def verilog_module_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    """Ports of ``module`` in Yosys-written Verilog: name -> (direction, width), in header order."""
    for m in _MODULE.finditer(text):
        if _unescape(m.group(1)) == module:
            break
    else:
        raise ExportError(f"module {module!r} not found in the emitted Verilog")
    body = text[m.end():text.find("endmodule", m.end())]
    decls = {}
    for d in _DECL.finditer(body):
        width = abs(int(d.group(2)) - int(d.group(3))) + 1 if d.group(2) is not None else 1
        decls[_unescape(d.group(4))] = (d.group(1), width)
    ports = {}
    for raw in (p.strip() for p in m.group(2).split(",")):
        if not raw:
            continue
        name = _unescape(raw)
        if name not in decls:
            raise ExportError(f"port {name!r} of module {module!r} has no input/output declaration in the Verilog")
        ports[name] = decls[name]
    return ports


def verilog_primitives(text: str) -> dict[str, int]:
    """Cell types instantiated in ``text`` but defined by none of its modules -> instance counts."""
    defined = {_unescape(m.group(1)) for m in _MODULE.finditer(text)}
    counts: dict[str, int] = {}
    for m in _INSTANCE.finditer(text):
        cell = _unescape(m.group(1))
        if cell in _KEYWORDS or cell in defined:
            continue
        counts[cell] = counts.get(cell, 0) + 1
    return dict(sorted(counts.items()))


def _fields(shape) -> list[dict] | None:
    """Bit fields of a payload port (``None`` for a plain number); nested layouts get dotted names."""
    if not isinstance(shape, data.Layout):
        return None
    out = []

    def walk(layout, prefix, base):
        for key, field in layout:
            name = f"{prefix}{key}"
            if isinstance(field.shape, data.Layout):
                walk(field.shape, name + ".", base + field.offset)
            else:
                s = Shape.cast(field.shape)
                out.append({"name": name, "offset": base + field.offset, "width": s.width, "signed": s.signed})
    walk(shape, "", 0)
    return out


def _layout_widths(shape) -> dict | None:
    if not isinstance(shape, data.Layout):
        return None
    return {str(key): Shape.cast(field.shape).width for key, field in shape}


def _port_name(path) -> str:
    return "__".join(str(p) for p in path)


def _stream_description(sig: stream.Signature, path: tuple, directions: dict[str, str]) -> dict:
    """One stream of the component; its direction is that of its ``valid`` port (``directions``:
    Verilog port name -> "input"/"output", from the signature)."""
    payload = sig.members["payload"].shape
    names = {role: _port_name(path + (role,)) for role in ("valid", "ready", "payload")}
    if directions[names["valid"]] != directions[names["payload"]] or \
            directions[names["valid"]] == directions[names["ready"]]:
        raise ExportError(f"stream {'.'.join(map(str, path))!r}: valid, payload and ready have directions "
                          f"{[directions[n] for n in names.values()]}")
    return {"kind": "amaranth.lib.stream", "direction": directions[names["valid"]], "ports": names,
            "always_valid": sig.always_valid, "always_ready": sig.always_ready,
            "payload_width": Shape.cast(payload).width, "payload_layout": _layout_widths(payload)}


def _protocol() -> dict:
    statuses = {s.name: int(s) for s in protocol.Status}
    return {"source": PACKET_FORMAT, "magic": protocol.MAGIC, "format_version": protocol.FORMAT_VERSION,
            "commands": {c.name: int(c) for c in protocol.Command},
            "targets": {t.name: int(t) for t in protocol.Target},
            "statuses": statuses,
            "arguments": {c.name: n for c, n in protocol.ARGUMENTS.items()},
            "counters": list(protocol.COUNTERS), "ident": list(protocol.IDENT)}


def _memory_map(config: EngineConfig) -> dict:
    L, kG = config.lanes, config.wage.kG
    T = protocol.Target
    ext_bits = config.external_width

    def entry(target, onchip, memory, external=0, external_word=0):
        regions = [{"range": [0, onchip], "location": "on-chip", "memory": memory}]
        if external:
            regions.append({"range": [onchip, onchip + external], "location": "external",
                            "memory": "external memory (port ext)", "external_word": external_word,
                            "external_word_bits": ext_bits})
        return {"code": int(target), "range": [0, onchip + external],
                "item_bits": protocol.item_bits(target, L, kG), "item_words": protocol.item_words(target, L, kG),
                "regions": regions}

    return {
        "PROGRAM": entry(T.PROGRAM, config.program_words, "program memory"),
        "ACT": entry(T.ACT, config.data_words, "activation scratchpad", config.external_words, 0),
        "ERR": entry(T.ERR, config.data_words, "error scratchpad", config.external_words, 0),
        "WEIGHTS": entry(T.WEIGHTS, config.weight_words, "weight store", config.external_weight_words,
                         config.external_words),
        "LABELS": entry(T.LABELS, config.label_words, "labels"),
    }


def _clock_and_reset(text: str, extras: dict[str, tuple[str, int]], name: str) -> tuple[dict, dict]:
    """The ``sync`` domain's clock and reset from the header ports the signature does not have."""
    clocks = [p for p in extras if re.fullmatch(r"(?:\w+_)?clk", p)]
    resets = [p for p in extras if re.fullmatch(r"(?:\w+_)?rst", p)]
    if clocks != ["clk"] or resets != ["rst"] or len(extras) != 2:
        raise ExportError(f"module {name!r}: expected the sync domain's 'clk' and 'rst' besides the signature's "
                          f"ports, found {sorted(extras)}")
    for port in ("clk", "rst"):
        if extras[port] != ("input", 1):
            raise ExportError(f"module {name!r}: port {port!r} is {extras[port]}, expected a 1-bit input")
    if re.search(r"\bnegedge\s+clk\b", text) or not re.search(r"\bposedge\s+clk\b", text):
        raise ExportError(f"module {name!r}: the Verilog does not clock on the rising edge of 'clk' only")
    if re.search(r"\b(?:pos|neg)edge\s+rst\b", text):
        raise ExportError(f"module {name!r}: 'rst' appears in a sensitivity list (an asynchronous reset)")
    if re.search(r"if\s*\(\s*!\s*rst\s*\)", text) or not re.search(r"if\s*\(\s*rst\s*\)", text):
        raise ExportError(f"module {name!r}: 'rst' is not used as an active-high reset")
    return ({"port": "clk", "edge": "rising", "domain": "sync"},
            {"port": "rst", "polarity": "active-high", "synchronous": True, "domain": "sync"})


def describe(engine: Engine, text: str, name: str) -> dict:
    """The JSON description of ``engine`` converted to ``text`` as module ``name`` (see the module
    docstring); raises :class:`ExportError` when a port does not match the Verilog."""
    config = engine.config
    header = verilog_module_ports(text, name)

    ports = []
    for path, member, _value in engine.signature.flatten(engine):
        pname = _port_name(path)
        direction = "input" if member.flow == In else "output"
        width = Shape.cast(member.shape).width
        if pname not in header:
            raise ExportError(f"port {pname!r} of the signature is not in the header of module {name!r}")
        if header[pname] != (direction, width):
            raise ExportError(f"port {pname!r}: the signature says {direction} of {width} bits, the Verilog "
                              f"{header[pname][0]} of {header[pname][1]} bits")
        ports.append({"name": pname, "direction": direction, "width": width,
                      "interface": ".".join(str(p) for p in path[:-1]) or None, "role": str(path[-1]),
                      "fields": _fields(member.shape)})
    extras = {p: d for p, d in header.items() if p not in {q["name"] for q in ports}}
    clock, reset = _clock_and_reset(text, extras, name)
    for role, port in (("clock", "clk"), ("reset", "rst")):
        ports.append({"name": port, "direction": "input", "width": 1, "interface": None, "role": role,
                      "fields": None})

    directions = {p["name"]: p["direction"] for p in ports}
    interfaces = {}
    for iname, member in engine.signature.members.items():
        if not member.is_signature:
            raise ExportError(f"member {iname!r} of the engine is not an interface")
        sig = member.signature
        if isinstance(sig, stream.Signature):
            desc = _stream_description(sig, (iname,), directions)
            desc["packet_format"] = PACKET_FORMAT
            interfaces[iname] = desc
        elif isinstance(sig, ExternalMemorySignature):
            interfaces[iname] = {
                "kind": "external-memory", "documentation": EXTMEM_DOC, "addr_bits": sig.addr_bits,
                "data_width": sig.data_width, "max_burst": sig.max_burst, "depth": config.external_depth,
                "streams": {s: _stream_description(m.signature, (iname, s), directions)
                            for s, m in sig.members.items()}}
        else:
            raise ExportError(f"interface {iname!r} ({sig!r}) has no description")

    primitives = verilog_primitives(text)
    try:
        amaranth_version = importlib.metadata.version("amaranth")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        amaranth_version = None
    proto = _protocol()
    proto["ident_values"] = protocol.ident_values(config)
    return {
        "format": FORMAT,
        "module": name,
        "verilog": f"{name}.v",
        "generator": "hw.export.export_verilog",
        "amaranth_version": amaranth_version,
        "target": config.target,
        "primitives": list(primitives),
        "primitive_instances": primitives,
        "simulation_models": SIMULATION_MODELS if primitives else None,
        "clock": clock,
        "reset": reset,
        "ports": ports,
        "interfaces": interfaces,
        "protocol": proto,
        "parameters": {
            "config": config.to_dict(),
            "fingerprint": config.fingerprint(),
            "derived": {"lanes": config.lanes, "batch": config.batch, "external_width": config.external_width,
                        "data_space": config.data_space, "weight_space": config.weight_space,
                        "external_depth": config.external_depth, "max_reduction": config.max_reduction,
                        "folds_input": config.folds_input, "addr_bits": ADDR_BITS,
                        "machine_words": MACHINE_WORDS, "mask_words": MASK_WORDS},
        },
        "memory_map": _memory_map(config),
    }


def _check_name(name) -> str:
    if not isinstance(name, str) or not _IDENT.fullmatch(name):
        raise ValueError(f"name={name!r}: must be a Verilog identifier (a letter or '_', then letters, digits, "
                         f"'_' or '$')")
    if name in _KEYWORDS:
        raise ValueError(f"name={name!r}: is a reserved word of Verilog/SystemVerilog")
    return name


def _check_out_dir(out_dir, name: str) -> Path:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir={out_dir!r}: must be a path (str or os.PathLike)")
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out_dir={str(path)!r}: exists and is not a directory")
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"out_dir={str(path)!r}: {str(ancestor)!r} is not a directory")
            break
    for suffix in (".v", ".json"):
        target = path / f"{name}{suffix}"
        if target.exists() and not target.is_file():
            raise ValueError(f"out_dir={str(path)!r}: {str(target)!r} exists and is not a file")
    return path


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def export_verilog(config: EngineConfig, out_dir, *, name: str = "wage_engine") -> ExportResult:
    """Write ``out_dir/{name}.v`` (the engine built from ``config``, top module ``name``) and
    ``out_dir/{name}.json`` (its description, see the module docstring); ``out_dir`` is created
    if missing. Arguments are checked before the (seconds-long) conversion; the description is
    checked against the Verilog before either file is written."""
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config={config!r}: must be a hw.engine.config.EngineConfig")
    name = _check_name(name)
    out = _check_out_dir(out_dir, name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out_dir={str(out)!r}: cannot create it: {e.strerror}") from None

    engine = Engine(config)
    text = verilog_backend.convert(engine, name=name, emit_src=False)
    description = describe(engine, text, name)
    if config.target == "generic" and description["primitives"]:
        raise ExportError(f"target 'generic' instantiates cells it does not define: {description['primitives']}")

    verilog_path, json_path = out / f"{name}.v", out / f"{name}.json"
    _write(verilog_path, text)
    _write(json_path, json.dumps(description, indent=2) + "\n")
    return ExportResult(verilog_path, json_path, description)
