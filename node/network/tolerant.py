"""Service registration that answers a request that is not valid protobuf with INVALID_ARGUMENT.

gRPC decodes a request with the generated deserializer before any handler runs; when that raises,
the caller gets UNKNOWN with the parser's exception text and no reason. `add_tolerant` registers the
same servicer with deserializers that turn a parse failure into a `Malformed` value, and handlers
that answer it with INVALID_ARGUMENT and reason MALFORMED (in the `clearline-reason` trailing
metadata), like any other malformed input. Streamed requests (peer Connect) see `Malformed` values
in their stream and must check what they read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

REASON_KEY = "clearline-reason"


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that did not parse as its message type."""

    type_name: str
    error: str

    @property
    def message(self) -> str:
        return f"the request is not a valid {self.type_name}: {self.error[:200]}"


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    name = type_name.full_name if type_name is not None else "message"

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError) as exc:
            return Malformed(name, str(exc))

    return parse


async def _refuse(context: grpc.aio.ServicerContext, bad: Malformed) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, bad.message, trailing_metadata=((REASON_KEY, "MALFORMED"),)
    )


def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    deserialize = _tolerant(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await _refuse(context, request)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await _refuse(context, request)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, serialize)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(handler.stream_unary, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(handler.stream_stream, deserialize, serialize)


class _Capture:
    """Stands in for the server while a generated add_*_to_server function registers a servicer."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service = service
        self.handlers = handlers


def add_tolerant(add_to_server: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register servicer on server as add_to_server would, with tolerant request parsing."""
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {name: _wrap(h) for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)
