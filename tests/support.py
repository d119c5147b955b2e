"""Small helpers shared by the integration and end-to-end tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 20, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` passes; its final verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def clean_env() -> dict[str, str]:
    """This process's environment without any ``LIFELINE_*`` setting (for CLI subprocesses)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
