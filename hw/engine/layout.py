"""Where every tensor lives in the engine's memories, and how the host packs and unpacks it.

Channels-last words
-------------------
Feature maps are stored channels-last, one position after another, in words of L = ``lanes``
channels: a map (B, C, H, W) (golden layout) occupies ``B·H·W·⌈C/L⌉`` words, word
``((b·H + y)·W + x)·⌈C/L⌉ + cb`` holding channels ``cb·L … cb·L + L − 1`` of position (b, y, x)
(zero beyond C). This is the layout the engine's address generators read: a convolution's reduction
runs over (i, j, channel block), and one word read yields L channels of one tap.

A fully connected layer reads its input *flattened*: per sample the channels-last flatten of
(C, H, W), i.e. ``H·W·C`` features in (y, x, c) order (:meth:`golden.config.WageConfig.draw_layout`),
``⌈H·W·C/L⌉`` words per sample. When C is a multiple of L that is the same memory as the map layout,
so a convolution can feed a fully connected layer in place; the network input is packed by the host
in whichever layout its consumer reads.

Weights
-------
Row o of layer l's stored weights (kG-bit codes) is a run of words over that layer's reduction in
the same channels-last order: conv ``kh·kw·⌈C/L⌉`` words, word (i, j, cb) holding
``Ws[o, cb·L + lane, i, j]``; fully connected ``⌈F/L⌉`` words of the flattened features. So the
gradient product streams its sums word by word in exactly this order, and the flat index of the
first element of a word is what the stochastic-rounding draws are keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden.config import WageConfig

__all__ = ["MapLayout", "TapMapLayout", "WeightLayout", "LayoutError"]


class LayoutError(ValueError):
    """A tensor handed to pack/unpack has the wrong shape or values; the message names it."""


@dataclass(frozen=True)
class MapLayout:
    """A (B, C, H, W) tensor at ``base`` in a word memory of ``lanes`` elements per word.

    ``flatten`` = False: positions (b, y, x), ⌈C/L⌉ words each. True: positions b, the channels-last
    flatten of (C, H, W) as ⌈H·W·C/L⌉ words (the input of a fully connected layer).
    """
    name: str
    base: int
    batch: int
    channels: int
    height: int
    width: int
    lanes: int
    flatten: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def positions(self) -> int:
        return self.batch if self.flatten else self.batch * self.height * self.width

    @property
    def features(self) -> int:
        """Elements per position."""
        return self.channels * self.height * self.width if self.flatten else self.channels

    @property
    def words_per_position(self) -> int:
        return -(-self.features // self.lanes)

    @property
    def words(self) -> int:
        return self.positions * self.words_per_position

    @property
    def end(self) -> int:
        return self.base + self.words

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != self.shape:
            raise LayoutError(f"{self.name}: tensor of shape {x.shape}, the layout holds {self.shape}")
        if x.dtype.kind not in "iub":
            raise LayoutError(f"{self.name}: integer tensor expected, got dtype {x.dtype}")
        return x

    def pack(self, x: np.ndarray) -> np.ndarray:
        """Golden (B, C, H, W) → (words, lanes) int64, zero in the padding lanes."""
        x = self._check(x).astype(np.int64)
        rows = x.transpose(0, 2, 3, 1).reshape(self.positions, self.features)     # channels-last
        padded = np.zeros((self.positions, self.words_per_position * self.lanes), dtype=np.int64)
        padded[:, :self.features] = rows
        return padded.reshape(self.words, self.lanes)

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """(words, lanes) → golden (B, C, H, W); the padding lanes are dropped."""
        words = np.asarray(words)
        if words.shape != (self.words, self.lanes):
            raise LayoutError(f"{self.name}: {words.shape} words given, the layout has ({self.words}, {self.lanes})")
        rows = words.reshape(self.positions, -1)[:, :self.features]
        b, c, h, w = self.shape
        return rows.reshape(b, h, w, c).transpose(0, 3, 1, 2).astype(np.int64)


@dataclass(frozen=True)
class TapMapLayout(MapLayout):
    """The network input im2col'd for a folded first convolution (``EngineConfig.fold_input``):
    a map of the layer's *product* positions (b, y, x), ``channels`` = k²·C features each, the taps
    in channels-last weight order (i, j, c) — feature (i·k + j)·C + c of position (y, x) is input
    channel c at (y + i − padding, x + j − padding), zero outside the image. :meth:`pack` takes the
    golden (B, C, H, W) input; :attr:`shape` is that input's shape."""
    kernel: int = 1
    padding: int = 0
    in_channels: int = 1
    in_height: int = 1
    in_width: int = 1

    @classmethod
    def for_input(cls, name: str, base: int, batch: int, in_shape: tuple[int, int, int], kernel: int,
                  padding: int, lanes: int) -> "TapMapLayout":
        c, h, w = in_shape
        ho, wo = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
        return cls(name, base, batch, kernel * kernel * c, ho, wo, lanes, False, kernel, padding, c, h, w)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_height, self.in_width)

    def _taps(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) → (B, Ho, Wo, k, k, C), the im2col of the padded input."""
        k, p = self.kernel, self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.empty((self.batch, self.height, self.width, k, k, self.in_channels), dtype=np.int64)
        for i in range(k):
            for j in range(k):
                out[:, :, :, i, j, :] = xp[:, :, i:i + self.height, j:j + self.width].transpose(0, 2, 3, 1)
        return out

    def pack(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x).astype(np.int64)
        rows = self._taps(x).reshape(self.positions, self.features)
        padded = np.zeros((self.positions, self.words_per_position * self.lanes), dtype=np.int64)
        padded[:, :self.features] = rows
        return padded.reshape(self.words, self.lanes)

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """(words, lanes) → the (B, C, H, W) input: every pixel from a tap that holds it (the taps of
        a packed input agree; pixels no tap reaches — none for stride 1 — stay 0)."""
        words = np.asarray(words)
        if words.shape != (self.words, self.lanes):
            raise LayoutError(f"{self.name}: {words.shape} words given, the layout has ({self.words}, {self.lanes})")
        k, p = self.kernel, self.padding
        taps = words.reshape(self.positions, -1)[:, :self.features].reshape(
            self.batch, self.height, self.width, k, k, self.in_channels)
        xp = np.zeros((self.batch, self.in_channels, self.in_height + 2 * p, self.in_width + 2 * p), dtype=np.int64)
        for i in range(k):
            for j in range(k):
                xp[:, :, i:i + self.height, j:j + self.width] = taps[:, :, :, i, j, :].transpose(0, 3, 1, 2)
        return xp[:, :, p:p + self.in_height, p:p + self.in_width]


@dataclass(frozen=True)
class WeightLayout:
    """Layer ``index``'s stored weights at ``base`` in the weight store: ``rows`` = O rows of
    ``words_per_row`` words over the reduction, channels-last (see the module docstring)."""
    index: int
    base: int
    rows: int
    taps: int                  # kh·kw (1 for fully connected)
    channels: int              # conv: input channels C; fc: the flattened fan-in F
    lanes: int
    weight_shape: tuple[int, ...]
    cl_shape: tuple[int, ...]  # channels-last shape of the weights (WageConfig.draw_layout)
    axes: tuple[int, ...]

    @classmethod
    def for_layer(cls, config: WageConfig, index: int, base: int, lanes: int, fold: bool = False) -> "WeightLayout":
        """``fold``: the rows of a folded first convolution (one tap of k²·C channels; the same
        channels-last order, so the same flat indices)."""
        layer = config.layers[index]
        shape, axes = config.draw_layout(index)
        if layer.kind == "conv" and fold:
            taps, channels = 1, layer.kernel * layer.kernel * layer.in_shape[0]
        elif layer.kind == "conv":
            taps, channels = layer.kernel * layer.kernel, layer.in_shape[0]
        else:
            taps, channels = 1, layer.fan_in
        return cls(index, base, layer.out_channels, taps, channels, lanes, layer.weight_shape, tuple(shape),
                   tuple(axes))

    @property
    def words_per_tap(self) -> int:
        return -(-self.channels // self.lanes)

    @property
    def words_per_row(self) -> int:
        return self.taps * self.words_per_tap

    @property
    def words(self) -> int:
        return self.rows * self.words_per_row

    @property
    def end(self) -> int:
        return self.base + self.words

    def word_index_base(self, row: int, word: int) -> int:
        """Channels-last flat index of the first element of word ``word`` of row ``row``."""
        tap, cb = divmod(word, self.words_per_tap)
        return (row * self.taps + tap) * self.channels + cb * self.lanes

    def pack(self, ws: np.ndarray) -> np.ndarray:
        """Golden weights (``weight_shape``) → (words, lanes) int64."""
        ws = np.asarray(ws)
        if ws.shape != self.weight_shape:
            raise LayoutError(f"layer {self.index}: weights of shape {ws.shape}, expected {self.weight_shape}")
        inverse = tuple(int(a) for a in np.argsort(self.axes))
        cl = ws.astype(np.int64).reshape([self.cl_shape[a] for a in self.axes]).transpose(inverse)
        cl = cl.reshape(self.rows, self.taps, self.channels)
        padded = np.zeros((self.rows, self.taps, self.words_per_tap * self.lanes), dtype=np.int64)
        padded[:, :, :self.channels] = cl
        return padded.reshape(self.words, self.lanes)

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """(words, lanes) → golden weights (``weight_shape``)."""
        words = np.asarray(words)
        if words.shape != (self.words, self.lanes):
            raise LayoutError(f"layer {self.index}: {words.shape} words given, the layout has "
                              f"({self.words}, {self.lanes})")
        cl = words.reshape(self.rows, self.taps, -1)[:, :, :self.channels].reshape(self.cl_shape)
        return cl.transpose(self.axes).reshape(self.weight_shape).astype(np.int64)

