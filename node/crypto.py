"""Ed25519 keys, signatures and hashing for Clearline.

Everything that is signed goes through `sign_bytes(domain, chain_id, payload)`: a fixed prefix, the
message kind (the domain) and the chain id come first, so a signed vote can never pass as a
transaction, and nothing signed for one chain verifies on another. Signatures and verification use
PyNaCl (libsodium), which verifies faster than `cryptography` and releases the GIL, so `verify_batch`
spreads a batch over a thread pool. `cryptography` stays for X.509 and TLS (cluster/pki.py).

Key files are JSON, written atomically with mode 0600; loading a missing or malformed one raises
`KeyFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import struct
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

import nacl.bindings
import nacl.exceptions
import nacl.signing

PublicKey = NewType("PublicKey", bytes)
Address = NewType("Address", bytes)
Hash = NewType("Hash", bytes)

PUBLIC_KEY_LEN = 32
SIGNATURE_LEN = 64
SEED_LEN = 32
ADDRESS_LEN = 20
HASH_LEN = 32

_PREFIX = b"clearline/v1\x00"


class CryptoError(Exception):
    """Base of the errors raised by this module."""


class KeyFileError(CryptoError):
    """A key file is missing, unreadable or malformed."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"key file {os.fspath(path)}: {problem}")
        self.path = os.fspath(path)
        self.problem = problem


class Domain(enum.Enum):
    """What a signature is for. The tag is part of the signed bytes."""

    TX = b"tx"
    VOTE = b"vote"
    PROPOSAL = b"proposal"
    PEER_HELLO = b"peer-hello"
    CLIENT_AUTH = b"client-auth"


def sha256(data: bytes) -> Hash:
    """SHA-256 digest of data."""
    return Hash(hashlib.sha256(data).digest())


# address_of is asked for every signature of every transaction admitted, and the same accounts sign
# again and again: a bounded memo (emptied when full) saves a hash per transaction.
_ADDRESSES: dict[bytes, Address] = {}
_ADDRESSES_MAX = 100_000


def address_of(public_key: bytes) -> Address:
    """The account or validator address of an Ed25519 public key: the first 20 bytes of its hash."""
    address = _ADDRESSES.get(public_key)
    if address is not None:
        return address
    if len(public_key) != PUBLIC_KEY_LEN:
        raise CryptoError(f"public key must be {PUBLIC_KEY_LEN} bytes, got {len(public_key)}")
    if len(_ADDRESSES) >= _ADDRESSES_MAX:
        _ADDRESSES.clear()
    address = _ADDRESSES[bytes(public_key)] = Address(hashlib.sha256(public_key).digest()[:ADDRESS_LEN])
    return address


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


@functools.lru_cache(maxsize=64)
def _sign_prefix(domain: Domain, chain_id: str) -> bytes:
    return _PREFIX + _length_prefixed(domain.value) + _length_prefixed(chain_id.encode())


def sign_bytes(domain: Domain, chain_id: str, payload: bytes) -> bytes:
    """The canonical bytes that are signed: prefix, domain, chain id, then the payload."""
    return _sign_prefix(domain, chain_id) + payload


def vote_payload(vote_type: int, height: int, round_: int, block_id: bytes) -> bytes:
    """Canonical, fixed-width encoding of a vote's signed fields (block_id empty = nil)."""
    return struct.pack(">BQI", vote_type, height, round_) + _length_prefixed(block_id)


def proposal_payload(height: int, round_: int, pol_round: int, block_id: bytes) -> bytes:
    """Canonical, fixed-width encoding of a proposal's signed fields (pol_round -1 = none)."""
    return struct.pack(">QIi", height, round_, pol_round) + _length_prefixed(block_id)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key (its 32-byte seed) with its public key and address."""

    seed: bytes
    public_key: PublicKey
    address: Address

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if len(seed) != SEED_LEN:
            raise CryptoError(f"Ed25519 seed must be {SEED_LEN} bytes, got {len(seed)}")
        public_key = PublicKey(bytes(nacl.signing.SigningKey(seed).verify_key))
        return cls(seed=seed, public_key=public_key, address=address_of(public_key))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.from_seed(os.urandom(SEED_LEN))

    def sign(self, domain: Domain, chain_id: str, payload: bytes) -> bytes:
        """Sign payload for domain on chain_id; returns the 64-byte signature."""
        return self.sign_raw(sign_bytes(domain, chain_id, payload))

    def sign_raw(self, message: bytes) -> bytes:
        """Sign bytes that are already the output of `sign_bytes`."""
        # libsodium's secret key is seed || public key: no key derivation per signature.
        return nacl.bindings.crypto_sign(message, self.seed + self.public_key)[:SIGNATURE_LEN]

    def __repr__(self) -> str:  # never print the seed
        return f"SigningKey(address={self.address.hex()})"


def verify_raw(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if signature is a valid Ed25519 signature of message by public_key. Never raises."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True


def verify(public_key: bytes, signature: bytes, domain: Domain, chain_id: str, payload: bytes) -> bool:
    """True if signature signs payload for domain on chain_id. Never raises."""
    return verify_raw(public_key, signature, sign_bytes(domain, chain_id, payload))


def verify_batch(items: Sequence[tuple[bytes, bytes, bytes]], executor: Executor | None = None) -> list[bool]:
    """Verify (public_key, signature, message) triples; with an executor, in parallel chunks.

    libsodium releases the GIL, so a thread pool scales this over cores.
    """
    if executor is None or len(items) < 64:
        return [verify_raw(pk, sig, msg) for pk, sig, msg in items]
    workers = max(1, getattr(executor, "_max_workers", 2))
    size = max(32, (len(items) + workers - 1) // workers)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    results: list[bool] = []
    for part in executor.map(_verify_chunk, chunks):
        results.extend(part)
    return results


def _verify_chunk(chunk: Iterable[tuple[bytes, bytes, bytes]]) -> list[bool]:
    return [verify_raw(pk, sig, msg) for pk, sig, msg in chunk]


# --- key files -----------------------------------------------------------------------------------

_KEY_TYPE = "ed25519"


def save_key_file(path: str | os.PathLike[str], key: SigningKey) -> None:
    """Write key to path as JSON with mode 0600, atomically (temp file, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "type": _KEY_TYPE,
        "address": key.address.hex(),
        "public_key": key.public_key.hex(),
        "private_key": key.seed.hex(),
    }
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(doc, indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)


def load_key_file(path: str | os.PathLike[str]) -> SigningKey:
    """Read a key written by `save_key_file`; raises KeyFileError with a clear reason."""
    target = Path(path)
    try:
        text = target.read_text()
    except FileNotFoundError:
        raise KeyFileError(path, "does not exist") from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read ({exc.strerror})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(path, f"is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, dict):
        raise KeyFileError(path, "must hold a JSON object")
    if doc.get("type") != _KEY_TYPE:
        raise KeyFileError(path, f"has key type {doc.get('type')!r}, expected {_KEY_TYPE!r}")
    try:
        seed = bytes.fromhex(str(doc["private_key"]))
    except KeyError:
        raise KeyFileError(path, "has no 'private_key'") from None
    except ValueError:
        raise KeyFileError(path, "'private_key' is not hex") from None
    if len(seed) != SEED_LEN:
        raise KeyFileError(path, f"'private_key' must be {SEED_LEN} bytes, got {len(seed)}")
    key = SigningKey.from_seed(seed)
    if "public_key" in doc and str(doc["public_key"]) != key.public_key.hex():
        raise KeyFileError(path, "'public_key' does not match 'private_key'")
    return key
