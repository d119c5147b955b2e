"""The failover harness's own parts (bench/failover.py, bench/soak.py): the drifting
alarm's curve, the TCP balancer in front of the two APIs, and the observer's arithmetic
(two leaders at once, stored readings per second)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from bench.failover import Observer, Options
from bench.soak import TcpProxy, drift_lel


def test_drift_crosses_the_limit_once_and_stays_above() -> None:
    values = [drift_lel(t / 10, 6.0) for t in range(0, 1500)]
    assert values == sorted(values)  # never falls back
    above = [v > 50.0 for v in values]
    first = above.index(True)
    assert all(above[first:]) and not any(above[:first])
    assert 6.0 <= first / 10 <= 6.1
    assert min(values) >= 2.0 and max(values) == 80.0


def test_options_refuse_unknown_or_no_faults() -> None:
    with pytest.raises(ValueError, match="faults"):
        Options(["kill", "reboot"])
    with pytest.raises(ValueError, match="faults"):
        Options([])
    assert Options(["cutoff", "freeze"]).estimated_s() > 30.0


class _Named:
    """A TCP server answering every connection with its name."""

    def __init__(self, name: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.name = name
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(self.name)
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # stop listening now (wakes the accept)
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[tuple[_Named, _Named]]:
    a, b = _Named(b"a"), _Named(b"b")
    yield a, b
    a.close()
    b.close()


def _ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(16)


def test_balancer_alternates_and_skips_a_refusing_target(servers: tuple[_Named, _Named]) -> None:
    a, b = servers
    proxy = TcpProxy(("127.0.0.1", a.port), ("127.0.0.1", b.port))
    try:
        assert sorted(_ask(proxy.port) for _ in range(4)) == [b"a", b"a", b"b", b"b"]
        a.close()  # refused from now on
        assert {_ask(proxy.port) for _ in range(4)} == {b"b"}
        proxy.block()
        assert _ask(proxy.port) == b""  # accepted, then closed: nothing forwarded
        assert proxy.refused == 1
        proxy.unblock()
        assert _ask(proxy.port) == b"b"
    finally:
        proxy.close()


def test_observer_counts_two_leaders_only_in_near_samples() -> None:
    obs = Observer([], "http://127.0.0.1:9", "x")
    obs.roles = [(0.0, "a", "leader"), (0.1, "b", "standby"), (1.0, "a", None),
                 (1.1, "b", "leader"), (2.0, "a", "leader")]  # a's stale leader sample: no
    assert obs.two_leaders() == 0
    obs.roles.append((2.1, "b", "leader"))  # both within 0.3 s
    assert obs.two_leaders() == 1


def test_observer_rate_windows_interpolate_counts() -> None:
    obs = Observer([], "http://127.0.0.1:9", "x")
    # 2,000/s, then nothing for 3 s (a takeover), then a backlog burst
    obs.stored = [(t / 4, int(500 * t)) for t in range(0, 21)]  # 0..5 s
    obs.stored += [(5.0 + t / 4, 10_000) for t in range(1, 13)]  # 5..8 s: flat
    obs.stored += [(8.25, 14_000), (8.5, 18_000), (9.0, 20_000)]
    windows = obs.rate_windows(0.0, 9.0)
    assert len(windows) == 9
    assert windows[:5] == [pytest.approx(2000.0)] * 5
    assert windows[5:8] == [0.0, 0.0, 0.0]
    assert windows[8] == pytest.approx(10_000.0)
