"""Hypothesis strategies for fuzzing the node: protobuf messages built from their descriptors, and
mutations of serialized bytes.

`messages(descriptor)` fills every field by its type: integers across their whole range and at its
edges (negative and huge), enum numbers outside the enum, empty, short, exactly address- and
hash-sized, and huge strings and bytes (up to HUGE_MAX, below every message limit), repeated fields
with zero to a few elements or the same element many times, at most one field of each oneof, and
sub-messages down to a fixed depth. `known` lets a test mix in values the node knows (real
addresses, hashes, symbols), so requests also reach the code behind the "not found" checks.

`mutated(raw)` truncates, flips bits, inserts, deletes, duplicates and appends protobuf fields; the
result is never equal to raw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from clearline.v1 import tx_pb2

HUGE_MIN = 64 * 1024
HUGE_MAX = 1024 * 1024  # one field; several of them stay below the API's 4 MiB message limit
MAX_DEPTH = 3
MANY_MAX = 6000  # more elements than the API's batch limit (5000)

_F = FieldDescriptor
_INT_RANGES: dict[int, tuple[int, int]] = {
    _F.TYPE_INT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _F.TYPE_UINT32: (0, 2**32 - 1),
    _F.TYPE_FIXED32: (0, 2**32 - 1),
    _F.TYPE_INT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _F.TYPE_UINT64: (0, 2**64 - 1),
    _F.TYPE_FIXED64: (0, 2**64 - 1),
}


@dataclass(frozen=True)
class Known:
    """Values the node knows, mixed into generated fields by type (bytes of 20 or 32, strings)."""

    byte_values: Sequence[bytes] = ()
    string_values: Sequence[str] = ()
    int_values: Sequence[int] = field(default_factory=lambda: [0, 1, 2, 3])


def _integers(lo: int, hi: int, known: Known) -> st.SearchStrategy[int]:
    edges = sorted({lo, hi, 0 if lo <= 0 else lo, 1, lo + 1, hi - 1} | set(known.int_values))
    edges = [e for e in edges if lo <= e <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def huge_bytes() -> st.SearchStrategy[bytes]:
    return st.builds(lambda n, b: bytes([b]) * n, st.integers(HUGE_MIN, HUGE_MAX), st.integers(0, 255))


def huge_text() -> st.SearchStrategy[str]:
    # Some multi-byte characters: the encoded size is up to 3 bytes per character.
    return st.builds(
        lambda n, c: c * n, st.integers(HUGE_MIN // 3, HUGE_MAX // 3), st.sampled_from("aZ\x00é€\U0001f4b0")
    )


def _bytes(known: Known) -> st.SearchStrategy[bytes]:
    options = [
        st.binary(max_size=40),
        st.binary(min_size=20, max_size=20),
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=64, max_size=64),
        huge_bytes(),
    ]
    if known.byte_values:
        options.insert(0, st.sampled_from(list(known.byte_values)))
    return st.one_of(*options)


def _text(known: Known) -> st.SearchStrategy[str]:
    options = [st.text(max_size=40), huge_text()]
    if known.string_values:
        options.insert(0, st.sampled_from(list(known.string_values)))
    return st.one_of(*options)


def _scalar(fd: FieldDescriptor, known: Known) -> st.SearchStrategy[object]:
    t = fd.type
    if t in _INT_RANGES:
        lo, hi = _INT_RANGES[t]
        return _integers(lo, hi, known)
    if t == _F.TYPE_BOOL:
        return st.booleans()
    if t == _F.TYPE_ENUM:
        defined = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(defined), _integers(-(2**31), 2**31 - 1, known))
    if t in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if t == _F.TYPE_FLOAT else 64)
    if t == _F.TYPE_STRING:
        return _text(known)
    if t == _F.TYPE_BYTES:
        return _bytes(known)
    raise NotImplementedError(f"field type {t} of {fd.full_name}")


def _value(fd: FieldDescriptor, known: Known, depth: int) -> st.SearchStrategy[object]:
    if fd.type == _F.TYPE_MESSAGE:
        return messages(fd.message_type, known, depth + 1)
    return _scalar(fd, known)


def _small(fd: FieldDescriptor, known: Known) -> st.SearchStrategy[object]:
    """A value of fd that is a few bytes at most, to be repeated many times."""
    if fd.type == _F.TYPE_MESSAGE:
        return messages(fd.message_type, known, MAX_DEPTH)
    if fd.type == _F.TYPE_BYTES:
        return st.one_of(st.sampled_from(list(known.byte_values) or [b""]), st.binary(max_size=40))
    if fd.type == _F.TYPE_STRING:
        return st.text(max_size=20)
    return _scalar(fd, known)


def _repeated(fd: FieldDescriptor, known: Known, depth: int) -> st.SearchStrategy[list[object]]:
    few = st.lists(_value(fd, known, depth), max_size=4)
    if depth > 0:
        return few
    # At the top level also one small element many times (batch limits, per-message counts).
    many = st.builds(lambda v, n: [v] * n, _small(fd, known), st.integers(5, MANY_MAX))
    return st.one_of(few, few, many)


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, known: Known, depth: int) -> Message:
    msg = GetMessageClass(desc)()
    if depth > MAX_DEPTH:
        return msg
    in_oneof = {fd.name for o in desc.oneofs for fd in o.fields}
    for oneof in desc.oneofs:
        choice = draw(st.sampled_from([None, *oneof.fields, *oneof.fields]))
        if choice is not None:
            _set(msg, choice, draw(_value(choice, known, depth)))
    for fd in desc.fields:
        if fd.name in in_oneof or not draw(st.booleans()):
            continue
        if fd.is_repeated:
            values = draw(_repeated(fd, known, depth))
            target = getattr(msg, fd.name)
            if fd.type == _F.TYPE_MESSAGE:
                for v in values:
                    target.add().CopyFrom(v)
            else:
                target.extend(values)
        else:
            _set(msg, fd, draw(_value(fd, known, depth)))
    return msg


def _set(msg: Message, fd: FieldDescriptor, value: object) -> None:
    if fd.type == _F.TYPE_MESSAGE:
        getattr(msg, fd.name).CopyFrom(value)
    else:
        setattr(msg, fd.name, value)


def messages(desc: Descriptor, known: Known | None = None, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of type desc with generated field values (see the module docstring)."""
    return _message(desc, known or Known(), depth)


# --- mutations of serialized bytes ------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@st.composite
def protobuf_fields(draw: st.DrawFn) -> bytes:
    """One encoded protobuf field with a random number and wire type, well formed or not."""
    number = draw(st.one_of(st.integers(1, 40), st.integers(1, 2**29 - 1)))
    wire = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))
    key = _varint(number << 3 | wire)
    if wire == 0:
        return key + _varint(draw(st.integers(0, 2**64 - 1)))
    if wire == 1:
        return key + draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return key + draw(st.binary(min_size=4, max_size=4))
    if wire == 2:
        payload = draw(st.binary(max_size=64))
        declared = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32)))
        return key + _varint(declared) + payload
    return key + draw(st.binary(max_size=8))  # groups and invalid wire types


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """raw truncated, bit-flipped, cut, spliced or extended with protobuf fields; never raw itself."""
    out = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "flip", "insert", "delete", "append", "duplicate"]))
        n = len(out)
        if kind == "truncate" and n:
            del out[draw(st.integers(0, n - 1)) :]
        elif kind == "flip" and n:
            i = draw(st.integers(0, n - 1))
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            i = draw(st.integers(0, n))
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del out[i : i + draw(st.integers(1, 16))]
        elif kind == "duplicate" and n:
            i = draw(st.integers(0, n - 1))
            out[i:i] = out[i : i + draw(st.integers(1, 64))]
        else:
            out += draw(protobuf_fields())
    if bytes(out) == raw:
        out += b"\x00"  # field number 0: never valid
    return bytes(out)


REENCODINGS = ("unknown field", "signatures first", "body twice", "padded length")


def reencoding(raw: bytes, kind: str, unknown: tuple[int, bytes] = (1023, b"\x01")) -> bytes:
    """Another encoding of the SignedTx raw: the same body and signatures in different bytes."""
    env = tx_pb2.SignedTx.FromString(raw)
    body = _varint(1 << 3 | 2) + _varint(len(env.body)) + env.body
    sigs = b"".join(
        _varint(2 << 3 | 2) + _varint(len(s)) + s for s in (sig.SerializeToString() for sig in env.signatures)
    )
    if kind == "unknown field":
        number, value = unknown
        return raw + _varint(number << 3 | 2) + _varint(len(value)) + value
    if kind == "signatures first":
        return sigs + body
    if kind == "body twice":
        return body + body + sigs
    if kind == "padded length":
        padded = bytes([b | 0x80 for b in _varint(len(env.body))]) + b"\x00"
        return _varint(1 << 3 | 2) + padded + env.body + sigs
    raise ValueError(kind)


@st.composite
def reencoded(draw: st.DrawFn, raw: bytes) -> bytes:
    """raw re-encoded (see reencoding), with a generated unknown field."""
    kind = draw(st.sampled_from(REENCODINGS))
    unknown = (draw(st.integers(3, 2**29 - 1)), draw(st.binary(max_size=16)))
    return reencoding(raw, kind, unknown)


class Blob(bytes):
    """Bytes whose repr stays readable in a failure report: in full up to 400 bytes, else the head,
    the length and a hash."""

    def __repr__(self) -> str:
        if len(self) <= 400:
            return bytes.__repr__(self)
        digest = hashlib.sha256(self).hexdigest()[:16]
        return f"<{len(self)} bytes, sha256 {digest}..., starting {bytes.__repr__(self[:160])}>"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # how Hypothesis prints it
        printer.text(repr(self))  # type: ignore[attr-defined]


def parses_as(raw: bytes, cls: type[Message]) -> bool:
    try:
        cls.FromString(raw)
    except DecodeError:
        return False
    return True
