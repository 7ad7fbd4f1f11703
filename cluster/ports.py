"""Find free 127.0.0.1 port ranges for test and benchmark networks."""

from __future__ import annotations

import random
import socket


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(nodes: int, stride: int = 10, per_node: int = 3, attempts: int = 200) -> int:
    """A base port such that base + stride*i + j (i < nodes, j < per_node) are all free now."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(20_000, 60_000 - stride * nodes, stride)
        if all(_free(base + stride * i + j) for i in range(nodes) for j in range(per_node)):
            return base
    raise RuntimeError("no free port range found on 127.0.0.1")
