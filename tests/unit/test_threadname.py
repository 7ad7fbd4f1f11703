"""node.threadname: OS thread names, as `clearline bench` reads them to split a node's CPU by thread."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from node.threadname import name_this_thread, thread_names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux")
def test_a_named_thread_shows_under_its_name_and_others_keep_theirs() -> None:
    ready, done = threading.Event(), threading.Event()
    tids: list[int] = []

    def worker() -> None:
        name_this_thread("verify-long-name-cut")
        tids.append(threading.get_native_id())
        ready.set()
        done.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert ready.wait(5)
        names = thread_names(os.getpid())
        assert names[tids[0]] == "verify-long-nam"  # the kernel keeps 15 bytes
        assert names[os.getpid()] != "verify-long-nam"  # the calling thread is not renamed
    finally:
        done.set()
        t.join()
    assert thread_names(2**22 + 12345) == {}  # no such process: empty, no error
