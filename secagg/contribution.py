"""The contribution contract: what every client adds to the sum, agreed in the session.

Everything that shapes a client's ring vector - the encoding and all its parameters (clip,
precision, ring, value bound, rotation seed, DP mechanism and noise), the weight rule, the
staleness rule, the model version the session aggregates for - is one :class:`Contribution`,
carried inside :class:`secagg.SecAggConfig`. The configuration's digest binds every key
derivation, ciphertext and signature of the session, so clients told different contributions
derive different masks: nothing they send can be unmasked, and with identities the consistency
check fails. A server that sends one node its own clip, or names another staleness to each
node, learns nothing from the sum.

A client builds its encoder from the contribution it agreed to, never from a side channel, and
its :class:`secagg.ClientPolicy` bounds the terms (:meth:`secagg.ClientPolicy.check_contribution`).
What a client can know itself (its example count, the model it pulled, its own randomness) is
not a term: it never comes from the server.

The terms are a flat, typed mapping (int, float, str, bytes) with one canonical encoding, so
the same contribution always hashes to the same digest.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from secagg.errors import ConfigurationError

__all__ = ["Contribution", "Encoding", "StalenessRule", "Term", "WeightRule"]

Term = int | float | str | bytes
_MAGIC = b"PAGK"
_VERSION = 1
_HEADER = struct.Struct(">4sBBH")
_INT = struct.Struct(">q")
_FLOAT = struct.Struct(">d")
_LENGTH = struct.Struct(">H")
_TAGS = {int: b"i", float: b"f", str: b"s", bytes: b"b"}
_MAX_TERMS = 64
_MAX_NAME = 64
_MAX_VALUE = 1024


class Encoding(str, Enum):
    """How a client turns its update into a ring vector (what the server may ask for)."""

    FIXED_POINT = "fixed-point"
    DISTRIBUTED_DP = "distributed-dp"


class WeightRule(str, Enum):
    """The weight a client gives its update: its own example count (FedAvg), or 1."""

    EXAMPLES = "examples"
    EQUAL = "equal"


class StalenessRule(str, Enum):
    """How a client discounts an update trained on an older model version."""

    NONE = "none"
    INVERSE_SQRT = "inverse-sqrt"  # s(tau) = 1 / sqrt(1 + tau), FedBuff (Nguyen et al. 2022)


_KINDS = tuple(Encoding)


@dataclass(frozen=True)
class Contribution:
    """The encoding and the rules every client of a session follows, bound by its digest.

    Attributes:
        encoding: the encoding kind.
        terms: its parameters and rules, name -> int, float, str or bytes. Well-known names:
            ``weights`` (:class:`WeightRule`), ``staleness`` (:class:`StalenessRule`),
            ``model_version`` (the server version the session aggregates for),
            ``model_digest`` (SHA-256 of the model the clients train on), and each encoding's
            own (``clip``, ``precision_bits``, ``max_weight``, ``noise_multiplier``, ...).

    Example:
        >>> c = Contribution(Encoding.FIXED_POINT, {"clip": 4.0, "precision_bits": 16})
        >>> Contribution.decode(c.encode()) == c
        True
        >>> c.number("clip")
        4.0
    """

    encoding: Encoding
    terms: Mapping[str, Term]

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "encoding", Encoding(self.encoding))
        except ValueError:
            raise ConfigurationError(
                f"unknown encoding {self.encoding!r}; use one of {[e.value for e in Encoding]}"
            ) from None
        terms = dict(self.terms)
        if len(terms) > _MAX_TERMS:
            raise ConfigurationError(f"a contribution has at most {_MAX_TERMS} terms")
        for name, value in terms.items():
            _check_term(name, value)
        object.__setattr__(self, "terms", MappingProxyType(dict(sorted(terms.items()))))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contribution) and self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.encode())

    def encode(self) -> bytes:
        """The canonical bytes (hashed into the session digest)."""
        parts = [_HEADER.pack(_MAGIC, _VERSION, _KINDS.index(self.encoding), len(self.terms))]
        for name, value in self.terms.items():
            raw = name.encode("ascii")
            parts += [bytes([len(raw)]), raw, _TAGS[type(value)], _pack(value)]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Contribution:
        """Parse :meth:`encode` output; anything but canonical bytes is refused.

        Raises:
            ConfigurationError: truncated, unknown, out-of-order or non-canonical bytes.
        """
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ConfigurationError("contribution bytes are truncated")
        magic, version, kind, count = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION or kind >= len(_KINDS):
            raise ConfigurationError("not a privagg contribution of a known version and kind")
        terms, offset = {}, _HEADER.size
        try:
            for _ in range(count):
                size = data[offset]
                name = data[offset + 1 : offset + 1 + size].decode("ascii")
                offset += 1 + size
                tag, offset = data[offset : offset + 1], offset + 1
                value, offset = _unpack(tag, data, offset)
                if name in terms:
                    raise ConfigurationError(f"contribution term {name!r} appears twice")
                terms[name] = value
        except (IndexError, UnicodeDecodeError, struct.error):
            raise ConfigurationError("contribution bytes are truncated or garbled") from None
        contribution = cls(_KINDS[kind], terms)
        if offset != len(data) or contribution.encode() != data:
            raise ConfigurationError("contribution bytes are not in canonical form")
        return contribution

    # -- typed access ------------------------------------------------------------------------------

    def _get(self, name: str, kinds: tuple[type, ...]) -> Term:
        if name not in self.terms:
            raise ConfigurationError(
                f"the session's {self.encoding.value} contribution has no {name!r} term"
            )
        value = self.terms[name]
        if type(value) not in kinds:
            raise ConfigurationError(
                f"contribution term {name!r} must be {' or '.join(k.__name__ for k in kinds)}, "
                f"got {type(value).__name__}"
            )
        return value

    def integer(self, name: str) -> int:
        """The int term ``name``."""
        return int(self._get(name, (int,)))

    def number(self, name: str) -> float:
        """The numeric term ``name`` as a float."""
        return float(self._get(name, (int, float)))

    def text(self, name: str) -> str:
        """The str term ``name``."""
        return str(self._get(name, (str,)))

    def blob(self, name: str) -> bytes:
        """The bytes term ``name``."""
        return bytes(self._get(name, (bytes,)))

    def optional(self, name: str) -> Term | None:
        """The term ``name``, or None when the contribution has none."""
        return self.terms.get(name)

    @property
    def weights(self) -> WeightRule:
        """The weight rule (:attr:`WeightRule.EXAMPLES` when unstated)."""
        return WeightRule(self.terms.get("weights", WeightRule.EXAMPLES.value))

    @property
    def staleness(self) -> StalenessRule:
        """The staleness rule (:attr:`StalenessRule.NONE` when unstated)."""
        return StalenessRule(self.terms.get("staleness", StalenessRule.NONE.value))


def _check_term(name: object, value: object) -> None:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isascii():
        raise ConfigurationError(f"contribution term names are short ASCII strings, got {name!r}")
    if type(value) not in _TAGS:
        raise ConfigurationError(
            f"contribution term {name!r} must be int, float, str or bytes, "
            f"got {type(value).__name__}"
        )
    if type(value) is int and not -(2**63) <= value < 2**63:
        raise ConfigurationError(f"contribution term {name!r} does not fit 64 bits: {value}")
    if type(value) is float and not math.isfinite(value):
        raise ConfigurationError(f"contribution term {name!r} must be finite, got {value}")
    if isinstance(value, (str, bytes)) and len(_pack(value)) - _LENGTH.size > _MAX_VALUE:
        raise ConfigurationError(f"contribution term {name!r} is over {_MAX_VALUE} bytes")


def _pack(value: Term) -> bytes:
    if type(value) is int:
        return _INT.pack(value)
    if type(value) is float:
        return _FLOAT.pack(value)
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _LENGTH.pack(len(raw)) + raw


def _unpack(tag: bytes, data: bytes, offset: int) -> tuple[Term, int]:
    if tag == b"i":
        return _INT.unpack_from(data, offset)[0], offset + _INT.size
    if tag == b"f":
        return _FLOAT.unpack_from(data, offset)[0], offset + _FLOAT.size
    if tag not in (b"s", b"b"):
        raise ConfigurationError(f"unknown contribution term type {tag!r}")
    (size,) = _LENGTH.unpack_from(data, offset)
    start = offset + _LENGTH.size
    raw = data[start : start + size]
    if len(raw) != size:
        raise ConfigurationError("contribution bytes are truncated")
    return (raw.decode("utf-8") if tag == b"s" else raw), start + size
