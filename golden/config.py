"""The one frozen, validated WAGE configuration every part of the project reads.

Hardware generators, the golden model, tests and host drivers all take a :class:`WageConfig`
(or its JSON file), so that bit widths, network shape, layer scales and the learning-rate schedule
are decided in exactly one place.  Every value is checked when the object is built; a bad value
raises :class:`ConfigError` naming it.

Integer conventions (spec §8.1), with ``k`` a bit width:

* activations ``A`` are integers in ``[-(2^(kA-1)-1), 2^(kA-1)-1]`` at scale ``2^-(kA-1)``;
* stored weights ``Ws`` are integers at scale ``2^-(kG-1)`` (kG bits), clipped to ``±w_clip``;
* forward weights ``Wq = clip(RNE(Ws / 2^(kG-kW)))`` at scale ``2^-(kW-1) / α`` (ternary for kW=2);
* errors ``E`` are kE-bit integers whose scale is discarded (Q_E renormalises);
* a layer with scale ``α = 2^a`` turns its sum ``P`` into activations by ``RNE(P / 2^(kW-1+a))``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

__all__ = [
    "ConfigError", "LayerSpec", "WageConfig", "NETWORKS", "parse_bits", "parse_net",
]

#: Presets: (network shorthand, input shape (C, H, W)). The shorthand grammar is in :func:`parse_net`.
NETWORKS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "mlp": ("256FC-10", (1, 28, 28)),
    "lenet5": ("32C5-MP2-64C5-MP2-512FC-10", (1, 28, 28)),
    "vgg7": ("128C3p-128C3p-MP2-256C3p-256C3p-MP2-512C3p-512C3p-MP2-1024FC-10", (3, 32, 32)),
}

#: How uint8 pixels p become input activations (spec §5.5); each map is exact (a 256-entry table).
INPUT_SCALES = ("x/256", "x/128-1", "x/127.5-1")

#: L_min = β·σ(kW) in the initialiser (spec §3).
INIT_BETA = Fraction(3, 2)


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names it."""


@dataclass(frozen=True)
class LayerSpec:
    """One weight layer: a convolution or fully connected product, then optional 2×2 max-pool.

    Every layer but the last is followed by WAGE's activation block (ReLU → Q_E → Q_A). Shapes
    are resolved, so hardware and golden model read the same numbers.
    """
    index: int
    kind: str                      # "conv" or "fc"
    in_shape: tuple[int, ...]      # (C, H, W) for conv; (N,) for fc (flattened C·H·W in that order)
    out_channels: int
    kernel: int = 1                # conv only
    padding: int = 0               # conv only: 0 ("valid") or kernel//2 ("same")
    pool: bool = False             # 2×2 stride-2 max-pool after the product
    last: bool = False
    alpha_log2: int = 0            # α = 2^alpha_log2 (spec §3)

    @property
    def fan_in(self) -> int:
        if self.kind == "conv":
            return self.kernel * self.kernel * self.in_shape[0]
        return self.in_shape[0]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return (self.out_channels, self.in_shape[0], self.kernel, self.kernel)
        return (self.out_channels, self.in_shape[0])

    @property
    def product_shape(self) -> tuple[int, ...]:
        """Shape (per sample) of the sum P, before pooling."""
        if self.kind == "conv":
            _, h, w = self.in_shape
            k, p = self.kernel, self.padding
            return (self.out_channels, h + 2 * p - k + 1, w + 2 * p - k + 1)
        return (self.out_channels,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape (per sample) of this layer's output activations."""
        shape = self.product_shape
        if self.pool:
            return (shape[0], shape[1] // 2, shape[2] // 2)
        return shape

    @property
    def out_positions(self) -> int:
        """Output positions per sample over which a conv weight is shared (1 for fc)."""
        s = self.product_shape
        return s[1] * s[2] if self.kind == "conv" else 1

    @property
    def weights(self) -> int:
        return math.prod(self.weight_shape)

    def describe(self) -> str:
        if self.kind == "conv":
            pad = "same" if self.padding else "valid"
            text = f"conv {self.in_shape[0]}->{self.out_channels} {self.kernel}x{self.kernel} {pad}"
        else:
            text = f"fc {self.in_shape[0]}->{self.out_channels}"
        return text + (" +maxpool" if self.pool else "") + f" alpha=2^{self.alpha_log2}"


def parse_bits(text: str) -> tuple[int, int, int, int]:
    """Parse ``"2-8-8-8"`` (kW-kA-kG-kE) into four ints; range checks happen in WageConfig."""
    parts = str(text).split("-")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"bits {text!r}: expected four integers kW-kA-kG-kE, for example '2-8-8-8'")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


_TOKEN = re.compile(r"^(?:(?P<rep>\d+)x)?(?:(?P<conv>\d+)C(?P<k>\d+)(?P<same>p?)|(?P<fc>\d+)FC|(?P<mp>MP2)|(?P<out>\d+))$")


def parse_net(text: str) -> list[tuple]:
    """Parse a network shorthand into raw tokens.

    Grammar (tokens joined by ``-``): ``32C5`` a 5×5 valid convolution with 32 output channels,
    ``32C5p`` the same with "same" zero padding, ``MP2`` a 2×2 stride-2 max-pool after the previous
    product, ``512FC`` a fully connected layer, a trailing bare number the output layer's class
    count; ``2x128C3p`` repeats a token. Stride is always 1.
    """
    tokens: list[tuple] = []
    raw = [t.strip() for t in str(text).split("-")]
    for i, tok in enumerate(raw):
        m = _TOKEN.match(tok)
        if not m or (m["out"] is not None and (i != len(raw) - 1 or m["rep"])):
            raise ConfigError(
                f"net {text!r}: token {tok!r} is not one of NCk (conv), NCkp (same-padded conv), MP2, "
                f"NFC, or a final class count")
        rep = int(m["rep"] or 1)
        if rep < 1:
            raise ConfigError(f"net {text!r}: repeat count in {tok!r} must be >= 1")
        if m["conv"]:
            tokens += [("conv", int(m["conv"]), int(m["k"]), bool(m["same"]))] * rep
        elif m["fc"]:
            tokens += [("fc", int(m["fc"]))] * rep
        elif m["mp"]:
            tokens += [("pool",)] * rep
        else:
            tokens.append(("fc", int(m["out"])))
    if not tokens or raw[-1].isdigit() is False:
        raise ConfigError(f"net {text!r}: must end with the class count, for example '...-10'")
    return tokens


def _is_power_of_two(x: Fraction) -> bool:
    return x > 0 and x.numerator & (x.numerator - 1) == 0 and x.denominator & (x.denominator - 1) == 0


def _log2_exact(x: Fraction) -> int:
    return x.numerator.bit_length() - x.denominator.bit_length()


@dataclass(frozen=True)
class WageConfig:
    """Frozen WAGE configuration. Build it with keywords; every field is validated eagerly.

    ``net`` is a preset name (``mlp``, ``lenet5``, ``vgg7``) or a shorthand such as
    ``"32C5-MP2-64C5-MP2-512FC-10"`` (then give ``input_shape``).
    ``lr_schedule`` is a tuple of ``(first_epoch, eta)`` pairs, η an exact power of two.
    Variant switches: ``init_limit`` "sqrt3" (code, default) or "sqrt6" (paper);
    ``weight_clip`` "kW" (code: ±(1−σ(kW))) or "kG" (paper: ±(1−σ(kG))).
    """
    kW: int = 2
    kA: int = 8
    kG: int = 8
    kE: int = 8
    net: str = "lenet5"
    input_shape: tuple[int, int, int] | None = None
    batch_size: int = 128
    lr_schedule: tuple[tuple[int, float], ...] = ((0, 8), (200, 1), (250, 0.125))
    seed: int = 0
    init_limit: str = "sqrt3"
    weight_clip: str = "kW"
    input_scale: str = "x/256"
    output_quantize: bool = True
    sr_bits: int = 16
    layers: tuple[LayerSpec, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("kW", "kA", "kG", "kE"):
            k = getattr(self, name)
            if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= 15:
                raise ConfigError(
                    f"{name}={k!r}: bit widths must be integers in 2..15 (at k >= 16 the reference's Q is "
                    f"the identity, which no integer datapath can reproduce)")
        if self.kW > self.kG:
            raise ConfigError(
                f"kW={self.kW} > kG={self.kG}: stored weights have kG bits, so the forward weight "
                f"grid (kW bits) must not be finer than it")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or not 1 <= self.batch_size <= 65536:
            raise ConfigError(f"batch_size={self.batch_size!r}: must be an integer in 1..65536")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed={self.seed!r}: must be an integer in 0..2^32-1 (it keys the 32-bit generator)")
        for name, allowed in (("init_limit", ("sqrt3", "sqrt6")), ("weight_clip", ("kW", "kG")),
                              ("input_scale", INPUT_SCALES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be one of {', '.join(allowed)}")
        if not isinstance(self.output_quantize, bool):
            raise ConfigError(f"output_quantize={self.output_quantize!r}: must be true or false")
        if not isinstance(self.sr_bits, int) or isinstance(self.sr_bits, bool) or not 1 <= self.sr_bits <= 32:
            raise ConfigError(f"sr_bits={self.sr_bits!r}: must be an integer in 1..32")
        object.__setattr__(self, "lr_schedule", self._check_schedule(self.lr_schedule))
        net, shape = self.net, self.input_shape
        if net in NETWORKS:
            preset_net, preset_shape = NETWORKS[net]
            shape = preset_shape if shape is None else shape
        elif shape is None:
            raise ConfigError(f"net={net!r} is not a preset ({', '.join(NETWORKS)}); give input_shape=(C, H, W) too")
        try:
            shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise ConfigError(f"input_shape={shape!r}: expected three positive integers (C, H, W)") from None
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"input_shape={shape!r}: expected three positive integers (C, H, W)")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "layers", self._build_layers())

    @staticmethod
    def _check_schedule(schedule) -> tuple[tuple[int, float], ...]:
        try:
            pairs = [(e, eta) for e, eta in schedule]
        except (TypeError, ValueError):
            raise ConfigError(f"lr_schedule={schedule!r}: expected pairs (first_epoch, eta)") from None
        if not pairs or pairs[0][0] != 0:
            raise ConfigError(f"lr_schedule={schedule!r}: must start at epoch 0")
        out = []
        for epoch, eta in pairs:
            if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
                raise ConfigError(f"lr_schedule: epoch {epoch!r} must be a non-negative integer")
            try:
                frac = Fraction(eta)
            except (TypeError, ValueError):
                raise ConfigError(f"lr_schedule: eta {eta!r} is not a number") from None
            if not _is_power_of_two(frac) or not -16 <= _log2_exact(frac) <= 16:
                raise ConfigError(f"lr_schedule: eta={eta!r} must be a power of two between 2^-16 and 2^16")
            out.append((epoch, float(frac)))
        if any(b[0] <= a[0] for a, b in zip(out, out[1:])):
            raise ConfigError(f"lr_schedule={schedule!r}: epochs must increase strictly")
        return tuple(out)

    def _build_layers(self) -> tuple[LayerSpec, ...]:
        net_text = NETWORKS[self.net][0] if self.net in NETWORKS else self.net
        tokens = parse_net(net_text)
        layers: list[dict] = []
        shape: tuple[int, ...] = self.input_shape
        for tok in tokens:
            if tok[0] == "pool":
                if not layers or layers[-1]["kind"] != "conv" or layers[-1]["pool"]:
                    raise ConfigError(f"net {net_text!r}: MP2 must follow a convolution (at most once)")
                c, h, w = layers[-1]["product_shape"]
                if h % 2 or w % 2:
                    raise ConfigError(
                        f"net {net_text!r}: MP2 after layer {len(layers) - 1} needs even height and width, "
                        f"got {h}x{w}")
                layers[-1]["pool"] = True
                shape = (c, h // 2, w // 2)
                continue
            if tok[0] == "conv":
                _, out_ch, k, same = tok
                if len(shape) != 3:
                    raise ConfigError(f"net {net_text!r}: a convolution cannot follow a fully connected layer")
                if same and k % 2 == 0:
                    raise ConfigError(f"net {net_text!r}: same padding needs an odd kernel, got {k}")
                pad = k // 2 if same else 0
                c, h, w = shape
                ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
                if k < 1 or ho < 1 or wo < 1:
                    raise ConfigError(f"net {net_text!r}: a {k}x{k} kernel does not fit a {h}x{w} input")
                if out_ch < 1:
                    raise ConfigError(f"net {net_text!r}: a layer needs at least one output channel")
                layers.append(dict(kind="conv", in_shape=shape, out_channels=out_ch, kernel=k,
                                   padding=pad, pool=False, product_shape=(out_ch, ho, wo)))
                shape = (out_ch, ho, wo)
            else:
                _, out_ch = tok
                if out_ch < 1:
                    raise ConfigError(f"net {net_text!r}: a layer needs at least one output unit")
                flat = (math.prod(shape),)
                layers.append(dict(kind="fc", in_shape=flat, out_channels=out_ch, pool=False,
                                   product_shape=(out_ch,)))
                shape = (out_ch,)
        if layers[-1]["kind"] != "fc":
            raise ConfigError(f"net {net_text!r}: the output layer must be fully connected")
        if layers[-1]["out_channels"] < 2:
            raise ConfigError(f"net {net_text!r}: needs at least 2 classes")
        specs = []
        for i, d in enumerate(layers):
            d.pop("product_shape")
            spec = LayerSpec(index=i, last=i == len(layers) - 1, **d)
            specs.append(dataclasses.replace(spec, alpha_log2=self._alpha_log2(spec.fan_in)))
        return tuple(specs)

    def _alpha_log2(self, fan_in: int) -> int:
        # Code: L = sqrt(3/n) (paper: sqrt(6/n)); L_min = 1.5·σ(kW); α = 2^round(log2(L_min/L)), at least 1.
        # Python 2's round() is half-away-from-zero; no real layer is near a tie (spec §3).
        limit = math.sqrt((3 if self.init_limit == "sqrt3" else 6) / fan_in)
        ratio = float(INIT_BETA) * self.sigma(self.kW) / limit
        a = math.floor(math.log2(ratio) + 0.5) if ratio > 0 else 0
        return max(a, 0)

    # ---- derived quantities (one definition each) ----------------------------------------------
    @staticmethod
    def sigma(k: int) -> float:
        """σ(k) = 2^(1−k), the k-bit step."""
        return 2.0 ** (1 - k)

    @property
    def classes(self) -> int:
        return self.layers[-1].out_channels

    @property
    def a_max(self) -> int:
        """Largest activation code, 2^(kA−1)−1."""
        return 2 ** (self.kA - 1) - 1

    @property
    def e_max(self) -> int:
        """Largest error code, 2^(kE−1)−1."""
        return 2 ** (self.kE - 1) - 1

    @property
    def wq_max(self) -> int:
        """Largest forward-weight code, 2^(kW−1)−1 (1: ternary)."""
        return 2 ** (self.kW - 1) - 1

    @property
    def w_shift(self) -> int:
        """Stored weight → forward weight: Wq = RNE(Ws / 2^w_shift), w_shift = kG − kW."""
        return self.kG - self.kW

    @property
    def w_clip(self) -> int:
        """Stored weights live in [−w_clip, w_clip] (code ±(1−σ(kW)); paper ±(1−σ(kG)))."""
        if self.weight_clip == "kW":
            return self.wq_max << self.w_shift
        return 2 ** (self.kG - 1) - 1

    def draw_layout(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """How layer ``index``'s stochastic-rounding draws map onto its weight tensor.

        The draw index runs row-major over the weights in *channels-last* order, the order in which
        TensorFlow (the reference) lays weights out and in which the hardware streams gradients:
        conv ``(O, kh, kw, C)``; fc after a ``(C, H, W)`` producer ``(O, H, W, C)`` (an NHWC
        flatten); other fc ``(O, N)``. Returns ``(shape, axes)``: draws reshaped to ``shape`` and
        transposed by ``axes`` land on ``weight_shape``. With one input channel (the MLP on
        images) the order equals the row-major order of ``weight_shape``.
        """
        layer = self.layers[index]
        if layer.kind == "conv":
            o, c, kh, kw = layer.weight_shape
            return (o, kh, kw, c), (0, 3, 1, 2)
        source = self.layers[index - 1].out_shape if index > 0 else self.input_shape
        o = layer.out_channels
        if len(source) == 3:
            c, h, w = source
            return (o, h, w, c), (0, 3, 1, 2)
        return layer.weight_shape, (0, 1)

    def act_shift(self, layer: LayerSpec) -> int:
        """r_l = kW − 1 + log2 α: A = clip(RNE(P / 2^r_l))."""
        return self.kW - 1 + layer.alpha_log2

    def eta_log2(self, epoch: int) -> int:
        """log2 η in force during ``epoch`` (the schedule's last entry starting at or before it)."""
        eta = [eta for start, eta in self.lr_schedule if start <= epoch][-1]
        return _log2_exact(Fraction(eta))

    def input_table(self):
        """The exact 256-entry map from uint8 pixel to input activation code (spec §5.5)."""
        import numpy as np
        from .quant import rne_div
        p = np.arange(256, dtype=np.int64)
        scale = 2 ** (self.kA - 1)
        if self.input_scale == "x/256":          # x = p/256
            num, den = p * scale, 256
        elif self.input_scale == "x/128-1":      # x = p/128 − 1
            num, den = (p - 128) * scale, 128
        else:                                    # x = p/127.5 − 1 = (2p − 255)/255
            num, den = (2 * p - 255) * scale, 255
        return np.clip(rne_div(num, den), -self.a_max, self.a_max)

    # ---- JSON round trip -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        d["input_shape"] = list(self.input_shape)
        d["lr_schedule"] = [[e, eta] for e, eta in self.lr_schedule]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "WageConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"configuration must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known keys: {sorted(names)}")
        d = dict(d)
        if "lr_schedule" in d:
            d["lr_schedule"] = tuple(tuple(p) if isinstance(p, list) else p for p in d["lr_schedule"])
        if d.get("input_shape") is not None:
            d["input_shape"] = tuple(d["input_shape"])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "WageConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"configuration is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> "WageConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
        try:
            return cls.from_json(text)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def replace(self, **changes) -> "WageConfig":
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        lines = [f"WAGE {self.kW}-{self.kA}-{self.kG}-{self.kE}, net {self.net}, input {self.input_shape}, "
                 f"batch {self.batch_size}, seed {self.seed}"]
        lines += [f"  layer {l.index}: {l.describe()}" for l in self.layers]
        return "\n".join(lines)
