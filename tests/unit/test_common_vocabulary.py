"""The shared vocabulary (common/): durations parsed once at load, one severity, one
retry policy."""

from __future__ import annotations

import pickle
import random

import pytest
from pydantic import BaseModel, ValidationError

from common.duration import NO_DURATION, Duration, OptionalDuration
from common.retry import Backoff, RetriesExhaustedError, retry_until
from common.severity import Severity
from lifeline.settings import load_settings


def test_duration_is_parsed_once_and_keeps_its_text() -> None:
    d = Duration(" 90 m")
    assert (str(d), d.ns, d.seconds) == ("90m", 5_400_000_000_000, 5400.0)
    assert d == "90m" and f"{d}" == "90m" and repr(d) == "Duration('90m')"
    assert (str(Duration(2)), Duration(0.25).ns) == ("2s", 250_000_000)
    assert pickle.loads(pickle.dumps(d)).ns == d.ns
    with pytest.raises(AttributeError):
        d.ns = 1  # type: ignore[misc]
    for bad in ("", "soon", "-1s", True, "3651d"):
        with pytest.raises(ValueError, match="duration"):
            Duration(bad)


def test_duration_fields_in_models() -> None:
    class M(BaseModel):
        every: Duration = Duration("5m")
        after: OptionalDuration = NO_DURATION

    m = M.model_validate({"every": "10s", "after": ""})
    assert (m.every.ns, m.after.ns, bool(m.after)) == (10_000_000_000, 0, False)
    assert m.model_dump_json() == '{"every":"10s","after":""}'
    with pytest.raises(ValidationError, match="invalid duration 'x'"):
        M.model_validate({"every": "x"})


def test_settings_hold_parsed_durations_and_severities() -> None:
    s = load_settings(None, mqtt={"session_expiry": "2h"},
                      cases={"deadlines": {"critical": {"handle": "1h"}}})
    assert isinstance(s.mqtt.session_expiry, Duration)
    assert s.mqtt.session_expiry.ns == 7200 * 10**9 and s.mqtt.session_expiry == "2h"
    assert s.ingest.max_future.seconds == 300.0
    assert s.cases.deadlines["critical"].handle.ns == 3600 * 10**9
    assert s.cases.deadlines["critical"].verify.ns == 0  # not set
    assert s.cases.auto_register_severity is Severity.MAJOR
    assert s.cases.auto_register_severity.rank == 3


def test_backoff_is_capped_exponential_with_seeded_jitter() -> None:
    plain = Backoff(base_s=0.5, max_s=4.0)
    assert [plain.delay(a) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    jittered = Backoff(base_s=1.0, max_s=300.0, jitter=(0.5, 1.0))
    first = [jittered.delay(a, random.Random(7)) for a in range(1, 12)]
    assert first == [jittered.delay(a, random.Random(7)) for a in range(1, 12)]
    for a, d in enumerate(first, start=1):
        assert 0.5 * jittered.nominal(a) <= d <= jittered.nominal(a)
    assert jittered.nominal(10_000) == 300.0
    assert jittered.capped(1.0).nominal(5) == 1.0
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(base_s=0.0, max_s=1.0)


def test_retry_until_retries_what_is_retryable_until_the_deadline() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    calls = iter([OSError("down"), OSError("down"), "ok"])

    def op() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    seen: list[int] = []
    policy = Backoff(base_s=1.0, max_s=10.0)
    assert retry_until(op, policy, retryable=lambda e: isinstance(e, OSError), deadline=60.0,
                       on_retry=lambda a, e, d: seen.append(a),
                       clock=lambda: now[0], sleep=sleep) == "ok"
    assert (slept, seen) == ([1.0, 2.0], [1, 2])

    def down() -> None:
        raise OSError("down")

    with pytest.raises(RetriesExhaustedError) as info:
        retry_until(down, policy, retryable=lambda e: True, deadline=now[0] + 5.0,
                    clock=lambda: now[0], sleep=sleep)
    assert info.value.attempts == 3 and isinstance(info.value.error, OSError)  # 1+2, then 4 > 5

    def refused() -> None:
        raise PermissionError("no")

    with pytest.raises(PermissionError):
        retry_until(refused, policy, retryable=lambda e: False, clock=lambda: now[0],
                    sleep=sleep)
