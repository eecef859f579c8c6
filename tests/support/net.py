"""Small local-network helpers shared by the tests and the GPU scripts."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    """A localhost port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_page(url: str, alive: Callable[[], bool], timeout: float) -> str | None:
    """GET `url` until it answers 2xx; its body, or None once `alive()` is false or `timeout` s passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.read().decode("utf-8", "replace")
        except OSError:
            if not alive() or time.monotonic() > deadline:
                return None
            time.sleep(0.5)
