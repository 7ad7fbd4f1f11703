"""The keepalive policy of the peer links, defined once for both ends of a connection.

A dialing node's channel pings its peer every KEEPALIVE_TIME_MS, even with no call and no data in
flight (an idle or paused peer is noticed within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS). The
accepting server must allow that rate: by default a gRPC server accepts a ping without data only
every 5 minutes and none without an active call, and after two early pings it closes the connection
with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings"), as seen on a paused-then-resumed node. So the
server's minimum interval is half the channel's (room for timer jitter and a ping that waits on a
resumed process), and it permits pings without calls.

channel_options() goes to every channel that dials a peer, server_options() to every server a peer
dials (the node's peer server, the fault proxy's both ends): tests/unit/test_peers.py checks they agree.
"""

from __future__ import annotations

from typing import Any, Final

KEEPALIVE_TIME_MS: Final = 10_000
"""A channel pings its peer this often when nothing else is received."""
KEEPALIVE_TIMEOUT_MS: Final = 5_000
"""A ping unanswered for this long closes the connection (the peer is gone or paused)."""
MIN_RECV_PING_INTERVAL_MS: Final = KEEPALIVE_TIME_MS // 2
"""A server accepts pings without data this often; it must not exceed KEEPALIVE_TIME_MS."""


def channel_options() -> list[tuple[str, Any]]:
    """The keepalive options of a channel that dials a peer."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # Unlimited pings without data in between (the default, 2, would stop pinging an idle link).
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_options() -> list[tuple[str, Any]]:
    """The keepalive options of a server that peers dial: its own pings to the dialer follow the
    channel's policy, and it accepts the dialer's pings at the channel's rate."""
    return [
        *channel_options(),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_RECV_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_RECV_PING_INTERVAL_MS),
    ]
