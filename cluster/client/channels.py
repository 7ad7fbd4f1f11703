"""Raw gRPC channels to a node's client API that carry an identity, for tools that use the generated
stubs directly (the chaos checker, the workload, the benchmarks, tests): TLS verified with the
network's CA, and a fresh `clearline-auth` token (node/auth.py) added to every call by an
interceptor. The Client SDK adds its tokens itself (cluster/client/aio.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import grpc
import grpc.aio

from cluster.client.tls import TlsConfig
from node import auth
from node.crypto import SigningKey


def token_metadata(key: SigningKey, chain_id: str, method: str | bytes) -> tuple[str, str]:
    """The metadata entry that authenticates one call of method (its full name) as key."""
    name = method.decode() if isinstance(method, bytes) else method
    return (auth.METADATA_KEY, auth.make_token(key, chain_id, name, int(time.time() * 1000)))


class _Details(NamedTuple):
    method: Any
    timeout: Any
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _SyncDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    pass


class _SyncAuth(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: SigningKey, chain_id: str) -> None:
        self._key = key
        self._chain_id = chain_id

    def _details(self, d: Any) -> _SyncDetails:
        metadata = [*(d.metadata or ()), token_metadata(self._key, self._chain_id, d.method)]
        return _SyncDetails(
            d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, getattr(d, "compression", None)
        )

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


class _AioAuth:
    def __init__(self, key: SigningKey, chain_id: str) -> None:
        self._key = key
        self._chain_id = chain_id

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()))
        metadata.add(*token_metadata(self._key, self._chain_id, d.method))
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)


# grpc.aio files an interceptor under the first kind it is an instance of: one class per kind.
class _AioUnaryAuth(_AioAuth, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _AioStreamAuth(_AioAuth, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


def channel(
    target: str,
    *,
    tls: TlsConfig | None,
    identity: SigningKey | None,
    chain_id: str,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A blocking channel to target: TLS with tls (None: plaintext), calls made as identity."""
    opts = [*options, *(tls.channel_options() if tls else [])]
    base = (
        grpc.secure_channel(target, tls.credentials(), options=opts)
        if tls
        else grpc.insecure_channel(target, options=opts)
    )
    return grpc.intercept_channel(base, _SyncAuth(identity, chain_id)) if identity else base


def aio_channel(
    target: str,
    *,
    tls: TlsConfig | None,
    identity: SigningKey | None,
    chain_id: str,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to target: TLS with tls (None: plaintext), calls made as identity."""
    opts = [*options, *(tls.channel_options() if tls else [])]
    interceptors = (
        [_AioUnaryAuth(identity, chain_id), _AioStreamAuth(identity, chain_id)] if identity else None
    )
    if tls:
        return grpc.aio.secure_channel(target, tls.credentials(), options=opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
