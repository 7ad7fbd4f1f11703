"""Who is asking: client identity on the client API (docs/access.md says why it works this way).

A client proves that it holds an account's Ed25519 key, the key that signs its transactions, with a
token in the request metadata (`clearline-auth`), one per call:

    v1.<public key hex>.<time ms>.<nonce hex>.<signature hex>

The signature is the account key's over the domain `client-auth`, the chain id, the time, the nonce
and the full gRPC method name (`/clearline.v1.Ledger/GetAccount`), with the same canonical framing as
every other signature (node.crypto.sign_bytes). So a token is

    - chain-bound: the chain id is signed, a token made for another network never verifies here;
    - method-bound: one made for GetStatus does not open a block stream;
    - short-lived: its time must be within MAX_SKEW_MS of the node's clock;
    - single-use: the node remembers each nonce until the token could no longer pass the time check,
      and refuses it a second time (REPLAYED).

The key must be the current key of an account that is not closed (a recovered account's old key is
refused at once), or a node key: a validator of the current set, an observer admitted on-ledger
(ROLE_OBSERVER), or this node's own key. Node keys and the admin, compliance and auditor roles read
everything; node/access.py decides what an account may read.

Pure: the caller passes the clock's time and looks identities up; the module has no I/O.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from node import crypto
from node.errors import ApiError

METADATA_KEY: Final = "clearline-auth"
VERSION: Final = "v1"
NONCE_LEN: Final = 16
# A token is accepted while its time is within this much of the node's clock either way: clients'
# clocks drift, and a token must outlive the call's trip to the node.
MAX_SKEW_MS: Final = 30_000
# Nonces remembered at most. Each call adds one for up to 2 * MAX_SKEW_MS; the per-client request
# rate (node/network/limits.py) keeps one client from filling it. Full, new tokens are refused
# (RESOURCE_EXHAUSTED AUTH_BUSY) rather than remembered less: forgetting would allow replays.
MAX_REMEMBERED: Final = 200_000
# The longest token: four fields of bounded size and the separators.
MAX_TOKEN_CHARS: Final = 3 + 64 + 1 + 20 + 1 + 2 * NONCE_LEN + 1 + 128 + 8


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. node: a validator, an observer or this node (reads everything)."""

    address: bytes
    public_key: bytes
    roles: frozenset[int]
    node: bool = False


def _payload(time_ms: int, nonce: bytes, method: str) -> bytes:
    encoded = method.encode()
    return struct.pack(">Q", time_ms) + nonce + struct.pack(">H", len(encoded)) + encoded


def make_token(
    key: crypto.SigningKey, chain_id: str, method: str, time_ms: int, nonce: bytes | None = None
) -> str:
    """The metadata value proving that the holder of key makes this call (method: the full gRPC
    method name) on chain_id at time_ms."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    sig = key.sign(crypto.Domain.CLIENT_AUTH, chain_id, _payload(time_ms, nonce, method))
    return ".".join((VERSION, key.public_key.hex(), str(time_ms), nonce.hex(), sig.hex()))


def _unauthenticated(reason: str, message: str) -> ApiError:
    return ApiError("UNAUTHENTICATED", reason, message)


@dataclass(frozen=True, slots=True)
class _Token:
    public_key: bytes
    time_ms: int
    nonce: bytes
    signature: bytes


def _parse(text: str) -> _Token:
    if len(text) > MAX_TOKEN_CHARS:
        raise _unauthenticated(
            "AUTH_MALFORMED", f"{METADATA_KEY} is longer than {MAX_TOKEN_CHARS} characters"
        )
    parts = text.split(".")
    if len(parts) != 5 or parts[0] != VERSION:
        raise _unauthenticated(
            "AUTH_MALFORMED", f"{METADATA_KEY} must be {VERSION}.<key>.<time ms>.<nonce>.<signature>"
        )
    try:
        public_key = bytes.fromhex(parts[1])
        nonce = bytes.fromhex(parts[3])
        signature = bytes.fromhex(parts[4])
        time_ms = int(parts[2]) if parts[2].isdigit() else -1
    except ValueError:
        time_ms = -1
    if (
        time_ms < 0
        or len(public_key) != crypto.PUBLIC_KEY_LEN
        or len(nonce) != NONCE_LEN
        or len(signature) != crypto.SIGNATURE_LEN
    ):
        raise _unauthenticated(
            "AUTH_MALFORMED",
            f"{METADATA_KEY}: a 32-byte key, a decimal time, a 16-byte nonce, a 64-byte signature",
        )
    return _Token(public_key, time_ms, nonce, signature)


class Authenticator:
    """Checks tokens and remembers their nonces. lookup resolves a verified public key to its
    identity (None: no account or node has that key)."""

    def __init__(
        self,
        chain_id: str,
        lookup: Callable[[bytes], Identity | None],
        *,
        max_skew_ms: int = MAX_SKEW_MS,
        max_remembered: int = MAX_REMEMBERED,
    ) -> None:
        self._chain_id = chain_id
        self._lookup = lookup
        self._max_skew_ms = max_skew_ms
        self._max_remembered = max_remembered
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[int, bytes]] = []  # (forget after, nonce), a heap

    def __len__(self) -> int:
        return len(self._seen)

    def authenticate(self, token: str | None, method: str, now_ms: int) -> Identity:
        """The caller's identity; raises ApiError (UNAUTHENTICATED with the reason, or
        RESOURCE_EXHAUSTED AUTH_BUSY) if the token does not prove one."""
        self._forget(now_ms)
        if not token:
            raise _unauthenticated(
                "AUTH_REQUIRED", f"this call needs a {METADATA_KEY} token (see docs/access.md)"
            )
        t = _parse(token)
        if abs(t.time_ms - now_ms) > self._max_skew_ms:
            raise _unauthenticated(
                "AUTH_EXPIRED",
                f"the token's time is {(t.time_ms - now_ms) / 1000:+.1f} s from the node's clock "
                f"(at most {self._max_skew_ms / 1000:.0f} s either way)",
            )
        if not crypto.verify(
            t.public_key,
            t.signature,
            crypto.Domain.CLIENT_AUTH,
            self._chain_id,
            _payload(t.time_ms, t.nonce, method),
        ):
            raise _unauthenticated(
                "AUTH_BAD_SIGNATURE", "the token's signature does not verify for this chain and method"
            )
        if t.nonce in self._seen:
            raise _unauthenticated("AUTH_REPLAYED", "this token was used already; make one per call")
        identity = self._lookup(t.public_key)
        if identity is None:
            raise _unauthenticated(
                "AUTH_UNKNOWN_IDENTITY",
                "the token's key is not the key of an open account or a node of this network",
            )
        if len(self._seen) >= self._max_remembered:
            raise ApiError(
                "RESOURCE_EXHAUSTED", "AUTH_BUSY", "too many calls in flight on this node; retry later"
            )
        self._seen.add(t.nonce)
        heapq.heappush(self._expiry, (t.time_ms + self._max_skew_ms, t.nonce))
        return identity

    def _forget(self, now_ms: int) -> None:
        """Drop nonces whose tokens could no longer pass the time check."""
        expiry = self._expiry
        while expiry and expiry[0][0] < now_ms:
            self._seen.discard(heapq.heappop(expiry)[1])
