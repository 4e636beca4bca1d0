"""Word-level model of the engine: executes a :class:`~hw.engine.compiler.Program` on packed memories.

It follows the hardware's dataflow, not the golden model's: operands come from the address
patterns of each instruction one word at a time (zero words where a pattern is invalid), tiles are
L×L products, results stream in (t1, t2, row) order through the quantiser functions of
:mod:`golden.quant` with the ReLU/saturation masks read beside them, and ΔW lands at the addresses
of the result pattern with draws keyed by the draw pattern (each word's first flat index).
Comparing it with :func:`golden.model.train_step` checks the compiler's memory map and every
address pattern; the RTL engine is compared with both (its scratchpads word for word against this model).
"""

from __future__ import annotations

import numpy as np

from golden.model import input_codes
from golden.prng import sr_draws
from golden.quant import forward_weights, quantize_activation, quantize_error, quantize_gradient

from .compiler import Program
from .isa import AddressPattern, Instruction, Op

__all__ = ["EngineModel", "ModelError"]


class ModelError(RuntimeError):
    """A program the model cannot run as the engine would (the message names the record)."""


class EngineModel:
    """Memories of one engine (activation and error scratchpads, weight store, labels) and a
    step executor. ``act_relu``/``act_sat`` are the mask bits stored beside each activation lane."""

    def __init__(self, program: Program):
        self.program = program
        cfg = program.config
        L = cfg.lanes
        self.lanes = L
        self.act = np.zeros((cfg.data_space, L), dtype=np.int64)
        self.act_relu = np.zeros((cfg.data_space, L), dtype=bool)
        self.act_sat = np.zeros((cfg.data_space, L), dtype=bool)
        self.err = np.zeros((cfg.data_space, L), dtype=np.int64)
        self.wmem = np.zeros((cfg.weight_space, L), dtype=np.int64)
        self.labels = np.zeros(cfg.label_words, dtype=np.int64)

    # -- host operations -------------------------------------------------------------------
    def load_weights(self, weights: list[np.ndarray]) -> None:
        for layout, ws in zip(self.program.weights, weights):
            self.wmem[layout.base:layout.end] = layout.pack(ws)

    def read_weights(self) -> list[np.ndarray]:
        return [layout.unpack(self.wmem[layout.base:layout.end]) for layout in self.program.weights]

    def load_batch(self, images: np.ndarray, labels: np.ndarray) -> None:
        wage = self.program.config.wage
        x = input_codes(wage, images)
        layout = self.program.inputs
        self.act[layout.base:layout.end] = layout.pack(x)
        self.labels[:len(labels)] = labels

    # -- execution --------------------------------------------------------------------------
    def _operand(self, memory: np.ndarray, pattern: AddressPattern) -> np.ndarray:
        """Words of a pattern, shape (n1, n2, nk, nr, L); invalid addresses read as zero."""
        address, valid = pattern.address_array(self.lanes)
        words = np.zeros(address.shape + (self.lanes,), dtype=np.int64)
        words[valid] = memory[address[valid]]
        return words

    def _products(self, ins: Instruction, a_mem: np.ndarray, b_mem: np.ndarray) -> np.ndarray:
        """Result rows of every tile in stream order, shape (n1·n2·L, L)."""
        L = self.lanes
        a = self._operand(a_mem, ins.a)
        b = self._operand(b_mem, ins.b)
        n1, n2 = ins.a.n1, ins.a.n2
        # A tile (L rows × K): transposed operand (nr = L): A[r, k·L + j] = word(k, r)[j];
        # direct (nr = 1): A[r, k] = word(k)[r]. B (K × L) alike with columns for rows.
        if ins.a.nr == L:
            a_tiles = a.transpose(0, 1, 3, 2, 4).reshape(n1, n2, L, -1)
        else:
            a_tiles = a[:, :, :, 0, :].transpose(0, 1, 3, 2)
        if ins.b.nr == L:
            b_tiles = b.transpose(0, 1, 2, 4, 3).reshape(n1, n2, -1, L)
        else:
            b_tiles = b[:, :, :, 0, :]
        # Exact: |sums| < 2^53 for every WAGE product (checked by the accumulator sizing).
        out = np.matmul(a_tiles.astype(np.float64), b_tiles.astype(np.float64)).astype(np.int64)
        return out.reshape(-1, L)

    def _rows(self, pattern: AddressPattern):
        address, valid = pattern.address_array(self.lanes)
        return address.reshape(-1), valid.reshape(-1)

    def _copy(self, ins: Instruction) -> None:
        """COPY: error-scratchpad words from the ``aux`` pattern's addresses to the ``out``
        pattern's, beat by beat (a beat invalid in either copies nothing); COPY_ACT: activation
        words, every array that makes one (:meth:`_act_arrays`)."""
        source, source_valid = self._rows(ins.aux)
        target, target_valid = self._rows(ins.out)
        both = source_valid & target_valid
        for memory in ([self.err] if ins.op == Op.COPY else self._act_arrays()):
            memory[target[both]] = memory[source[both]]

    def _act_arrays(self) -> list:
        """The arrays an activation word is made of: values, ReLU and saturation masks."""
        return [self.act, self.act_relu, self.act_sat]

    def _loss(self, ins: Instruction) -> None:
        """LOSS: D = A_out − onehot·2^(kA−1) per output word (labels looked up by the row t1), Q_E, × sat."""
        L = self.lanes
        address, _ = self._rows(ins.aux)
        t1 = np.repeat(np.arange(ins.aux.n1), ins.aux.n2)
        t2 = np.tile(np.arange(ins.aux.n2), ins.aux.n1)
        lane = self.labels[t1][:, None] - t2[:, None] * L == np.arange(L)[None, :]
        e, _ = quantize_error(self.act[address] - ins.onehot * lane, self.program.config.wage.kE)
        out, _ = self._rows(ins.out)
        self.err[out] = e * self.act_sat[address]

    def run_step(self, step: int, eta_log2: int) -> None:
        """Execute the program once (one training step)."""
        wage = self.program.config.wage
        wq = forward_weights(self.wmem, wage.kW, wage.kG)        # what the weight store serves
        L = self.lanes
        for ins in self.program.instructions:
            if ins.op == Op.FWD:
                p = self._products(ins, self.act, wq)
                a, relu, sat = quantize_activation(p, ins.shift, wage.kA, relu=bool(ins.relu))
                if relu is None:
                    relu = p > 0
                address, valid = self._rows(ins.out)
                self.act[address[valid]] = a[valid]
                self.act_relu[address[valid]] = relu[valid]
                self.act_sat[address[valid]] = sat[valid]
            elif ins.op == Op.LOSS:
                self._loss(ins)
            elif ins.op == Op.ERR:
                d = self._products(ins, self.err, wq)
                aux, aux_valid = self._rows(ins.aux)
                sat = np.where(aux_valid[:, None], self.act_sat[aux], False)
                relu = np.where(aux_valid[:, None], self.act_relu[aux], False)
                e, _ = quantize_error(d * sat, wage.kE)
                address, valid = self._rows(ins.out)
                self.err[address[valid]] = (e * relu)[valid]
            elif ins.op == Op.GRAD:
                g = self._products(ins, self.err, self.act)
                address, valid = self._rows(ins.out)
                first, _ = self._rows(ins.draw)            # lane j of a word draws at index first + j
                draws = sr_draws(wage.seed, step, ins.layer, 0, wage.sr_bits,
                                 indices=(first[:, None] + np.arange(L)[None, :]).reshape(-1)).reshape(g.shape)
                dw, q = quantize_gradient(g, eta_log2, draws, wage.sr_bits)
                if q is None:
                    continue
                target = address[valid]
                self.wmem[target] = np.clip(self.wmem[target] - dw[valid], -wage.w_clip, wage.w_clip)
            elif ins.op in Op.COPIES:
                self._copy(ins)
            elif ins.op == Op.END:
                break
