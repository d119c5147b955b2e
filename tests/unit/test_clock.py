"""The service clock: wall time, or event time for simulation and replay."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lifeline.clock import ServiceClock, parse_instant_ns
from lifeline.errors import ConfigError
from lifeline.settings import load_settings

S = 10**9
T0 = parse_instant_ns("2026-03-05T00:00:00+08:00")


def ts(*seconds: float) -> np.ndarray:
    return np.array([T0 + int(s * S) for s in seconds], dtype=np.int64)


def test_wall_clock_ignores_readings() -> None:
    clock = ServiceClock()
    clock.observe(ts(10**6))
    assert abs(clock.now_ns() - time.time_ns()) < 60 * S


def test_event_clock_follows_readings_forward_only() -> None:
    clock = ServiceClock("event", T0, max_ahead_ns=300 * S)
    assert clock.now_ns() == T0
    clock.observe(ts(30, 60, 45))
    assert clock.now_ns() == T0 + 60 * S
    clock.observe(ts(10))  # a late reading never turns it back
    assert clock.now_ns() == T0 + 60 * S
    # one device of twenty an hour ahead: not followed
    clock.observe(ts(*range(70, 89), 3600 + 90))
    assert clock.now_ns() == T0 + 88 * S
    # a backlog spanning two days (full-speed replay): followed to its end at once
    clock.observe(ts(*range(100, 2 * 86_400, 300)))
    assert clock.now_ns() == T0 + 172_600 * S
    clock.observe(np.empty(0, dtype=np.int64))
    assert clock.now_ns() == T0 + 172_600 * S


def test_event_clock_needs_a_start() -> None:
    with pytest.raises(ConfigError, match=r"needs clock\.start"):
        ServiceClock("event")
    with pytest.raises(ConfigError, match="UTC offset"):
        parse_instant_ns("2026-03-05T00:00:00")
    with pytest.raises(ConfigError, match="needs start"):
        load_settings(clock={"source": "event"})
    settings = load_settings(clock={"source": "event", "start": "2026-03-05T00:00:00+08:00"})
    assert parse_instant_ns(settings.clock.start) == T0
