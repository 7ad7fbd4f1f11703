"""The key layout of the node's LevelDB store, and the byte encodings of keys and small values.

Every key is a one-byte table prefix followed by fixed-width big-endian integers or fixed-size hashes,
so LevelDB's byte order is height order and a range scan of one table is one iterator seek.

    table        key                                          value
    meta         00 | name                                    see META_* below
    block        'b' | height(8)                              serialized Block
    block hash   'k' | height(8)                              block hash (32 bytes)
    hash index   'h' | block hash                             height(8)
    commit       'c' | height(8)                              serialized CommitCertificate of that height
    tx index     't' | tx hash                                height(8) | index(4)
    receipt      'r' | height(8) | index(4)                   serialized Receipt
    block events 'x' | height(8)                              serialized Receipt of the block's own work
                                                              (hold expiries; no tx_hash), if it had events
    state        's' | ledger key                             ledger value (state entries and Merkle nodes)
    account      'a' | len(1) | address | height(8) | index(4)   tx hash
    evidence     'e' | height(8) | index(4)                   serialized Evidence
    validators   'v' | height(8)                              serialized ValidatorSet in effect FROM height
                                                              (written only on change; lookup = one seek)

Pure functions only: no plyvel here, so the layout can be tested and reused (e.g. by a repair tool).
"""

from __future__ import annotations

import struct

SCHEMA_VERSION = 1

P_META = b"\x00"
P_BLOCK = b"b"
P_BLOCK_HASH = b"k"
P_HASH_HEIGHT = b"h"
P_COMMIT = b"c"
P_TX = b"t"
P_RECEIPT = b"r"
P_BLOCK_EVENTS = b"x"
P_STATE = b"s"
P_ACCOUNT = b"a"
P_EVIDENCE = b"e"
P_VALSET = b"v"

META_SCHEMA = P_META + b"schema"  # encode_u32(SCHEMA_VERSION)
META_CHAIN_ID = P_META + b"chain_id"  # utf-8 chain id; present iff genesis was saved
META_GENESIS = P_META + b"genesis"  # genesis JSON bytes as given
META_LATEST = P_META + b"latest_height"  # encode_height; written in the same batch as the block
# encode_height: the lowest height whose block is kept with its receipts and indexes (absent: 1).
# A state-synced store starts above its snapshot's height: it holds that block only as its anchor.
META_BASE = P_META + b"base_height"

MAX_HEIGHT = 2**64 - 1
MAX_INDEX = 2**32 - 1
MAX_ADDRESS_LEN = 255

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_LOCATION = struct.Struct(">QI")


def encode_height(height: int) -> bytes:
    """8-byte big-endian height; raises ValueError outside [0, 2**64)."""
    if not 0 <= height <= MAX_HEIGHT:
        raise ValueError(f"height {height} out of range")
    return _U64.pack(height)


def decode_height(data: bytes) -> int:
    """Inverse of encode_height; raises ValueError unless data is exactly 8 bytes."""
    if len(data) != _U64.size:
        raise ValueError(f"a height is 8 bytes, got {len(data)}")
    value: int = _U64.unpack(data)[0]
    return value


def encode_u32(value: int) -> bytes:
    if not 0 <= value <= MAX_INDEX:
        raise ValueError(f"u32 {value} out of range")
    return _U32.pack(value)


def decode_u32(data: bytes) -> int:
    if len(data) != _U32.size:
        raise ValueError(f"a u32 is 4 bytes, got {len(data)}")
    value: int = _U32.unpack(data)[0]
    return value


def encode_location(height: int, index: int) -> bytes:
    """(height, index in block) as 12 bytes: the tx index value and the suffix of several keys."""
    if not 0 <= height <= MAX_HEIGHT or not 0 <= index <= MAX_INDEX:
        raise ValueError(f"location ({height}, {index}) out of range")
    return _LOCATION.pack(height, index)


def decode_location(data: bytes) -> tuple[int, int]:
    if len(data) != _LOCATION.size:
        raise ValueError(f"a location is 12 bytes, got {len(data)}")
    height, index = _LOCATION.unpack(data)
    return int(height), int(index)


def block_key(height: int) -> bytes:
    return P_BLOCK + encode_height(height)


def block_hash_key(height: int) -> bytes:
    return P_BLOCK_HASH + encode_height(height)


def hash_height_key(block_hash: bytes) -> bytes:
    return P_HASH_HEIGHT + block_hash


def commit_key(height: int) -> bytes:
    return P_COMMIT + encode_height(height)


def tx_key(tx_hash: bytes) -> bytes:
    return P_TX + tx_hash


def receipt_key(height: int, index: int) -> bytes:
    return P_RECEIPT + encode_location(height, index)


def block_events_key(height: int) -> bytes:
    return P_BLOCK_EVENTS + encode_height(height)


def state_key(key: bytes) -> bytes:
    return P_STATE + key


def account_prefix(address: bytes) -> bytes:
    """The prefix of one account's history; the length byte keeps addresses of different lengths apart."""
    if not 0 < len(address) <= MAX_ADDRESS_LEN:
        raise ValueError(f"address length {len(address)} not in 1..{MAX_ADDRESS_LEN}")
    return P_ACCOUNT + bytes([len(address)]) + address


def account_key(address: bytes, height: int, index: int) -> bytes:
    return account_prefix(address) + encode_location(height, index)


def evidence_key(height: int, index: int) -> bytes:
    return P_EVIDENCE + encode_location(height, index)


def valset_key(height: int) -> bytes:
    return P_VALSET + encode_height(height)
