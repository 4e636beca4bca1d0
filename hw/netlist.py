"""Netlist conventions shared by the generators and the synthesis flows.

Duplicated registers. Yosys's ``opt_merge`` folds flip-flops with identical inputs into one, which
undoes deliberate register duplication (a flag copied once per processing element so that each copy
drives a few loads instead of a whole anti-diagonal). ``keep`` on a *wire* does not stop it; ``keep``
on the flip-flop *cell* does, and Amaranth can only name wires. So generators name such registers
with :func:`kept` and every flow runs :data:`YOSYS_KEEP_COMMANDS` right after reading the design.
"""

from __future__ import annotations

__all__ = ["KEEP_SUFFIX", "kept", "YOSYS_KEEP_COMMANDS"]

KEEP_SUFFIX = "__keep"

#: Yosys commands: turn processes into cells, then mark every cell whose Q drives a ``*__keep`` wire.
YOSYS_KEEP_COMMANDS = ("proc", f"setattr -set keep 1 w:*{KEEP_SUFFIX} %ci1:+[Q]")


def kept(name: str) -> str:
    """Signal name for a register that synthesis must not merge with its equivalents."""
    return name + KEEP_SUFFIX
