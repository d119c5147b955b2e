"""The MQTT network loop in a process of its own.

In one process the paho network thread and the pipeline (decode, rules, line
protocol, writer) share one GIL, so a second core does not help.
:class:`ProcessSubscriber` runs an :class:`MqttSubscriber` in a child process
that does nothing but read the socket and send whole batches of
``(topic, payload, received_at_ns, mid, qos, session)`` tuples through a pipe;
a thread of the service puts them into the :class:`RawBuffer`. Acknowledgements
go back as ``(session, mid, qos)`` triples and are sent by the child on the
connection the messages came on (MQTT allows no other); an ack for a connection
that has gone since is refused there and the broker redelivers the message.

Flow control: the child may have at most ``buffer.limit`` messages read but not yet
taken by the service's decoder. After every drain the service sends how many of the
child's messages the decoder has taken (``("consumed", generation, n)``); at the
window the child's client stops reading the socket (see
:class:`ingest.mqttsocket.BufferedClient`). A decoder that is held up (InfluxDB
away, spool full) takes nothing, so the buffer stays bounded.

The child ignores SIGINT/SIGTERM (a signal to the process group must not cut it
off before the service has acknowledged what it stored): the service stops it,
and it exits by itself when the service's end of the pipe closes. A child that
dies is started again with connections numbered in a new range.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common.retry import Backoff
from ingest.errors import BrokerRejectedError, BrokerUnavailableError, IngestError
from ingest.gctuning import tune_gc_for_throughput
from ingest.raw import RawBuffer, RawMessage
from ingest.subscriber import MqttOptions, MqttSubscriber, session_numbers

log = logging.getLogger(__name__)

SESSION_RANGE = 1_000_000  # connection numbers of child n: n * SESSION_RANGE + 1, ...
_GENERATIONS = itertools.count(1)  # network processes started by this process
_CONTROL_POLL_S = 0.002
_COMMANDS_PER_TURN = 32


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """What the network process reports with every batch."""

    connected: bool = False
    connects: int = 0
    session: int = 0
    subscribed: bool = False
    acked: int = 0
    stale_acks: int = 0
    deferred: int = 0
    dropped_at_shutdown: int = 0
    received: int = 0
    read_holds: int = 0
    sessions_lost: int = 0
    sessions_taken_over: int = 0
    sessions_kept: int = 0
    yielded: bool = False


class _BatchSink:
    """The child's buffer: the network thread appends plain tuples, the main thread takes
    the list whole."""

    def __init__(self, window: int = 0) -> None:
        self.items: list[tuple[str, bytes, int, int, int, int]] = []
        self.received = 0
        self.window = window  # 0: no limit
        self.consumed = 0  # of ours, taken by the service's decoder
        self._lock = threading.Lock()

    def full(self) -> bool:
        """``window`` messages read and not yet taken by the decoder (the network thread
        asks; a stale count only delays the answer by a turn)."""
        return 0 < self.window <= self.received + len(self.items) - self.consumed

    def put(self, topic: str, payload: bytes, received_at_ns: int, mid: int, qos: int,
            session: int) -> None:
        with self._lock:  # no append may land in a list already taken
            self.items.append((topic, payload, received_at_ns, mid, qos, session))

    def take(self) -> list[tuple[str, bytes, int, int, int, int]]:
        with self._lock:
            items, self.items = self.items, []
            self.received += len(items)  # with the swap: full() never misses a batch
        return items


def _status(sub: MqttSubscriber, sink: _BatchSink) -> ChildStatus:
    return ChildStatus(sub.connected, sub.connects, sub.session, sub.subscribed.is_set(),
                       sub.acked, sub.stale_acks, sub.deferred, sub.dropped_at_shutdown,
                       sink.received, sub.read_holds, sub.sessions_lost,
                       sub.sessions_taken_over, sub.sessions_kept, sub.yielded)


def child_main(data: Connection, control: Connection) -> None:
    """Entry point of the network process: its set-up arrives first on ``control``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        options, topics, generation, logs, batch_messages, flush_s, window = control.recv()
    except (EOFError, OSError):
        return
    _setup_child_logging(*logs)
    tune_gc_for_throughput()  # many short-lived tuples, as in the service
    session_numbers(generation * SESSION_RANGE + 1)
    sink = _BatchSink(window)
    try:
        sub = MqttSubscriber(options, topics, sink)
        sub.start()
    except BrokerRejectedError as exc:
        data.send_bytes(pickle.dumps(("error", "rejected", str(exc))))
        return
    except BrokerUnavailableError as exc:
        data.send_bytes(pickle.dumps(("error", "unavailable", str(exc))))
        return
    dumps = pickle.dumps
    last = _status(sub, sink)
    data.send_bytes(dumps(("started", [], last)))
    last_flush = time.monotonic()
    stopping = False
    try:
        while not stopping:
            try:
                # a bounded number of commands per turn: a stream of acks must not hold
                # back the hand-over of messages
                ready = control.poll(0 if len(sink.items) >= batch_messages
                                     else _CONTROL_POLL_S)
                for _ in range(_COMMANDS_PER_TURN):
                    if not ready:
                        break
                    command = control.recv()
                    kind = command[0]
                    if kind == "ack":
                        sub.ack_ids(command[1])
                    elif kind == "consumed":
                        if command[1] == generation and command[2] > sink.consumed:
                            sink.consumed = command[2]
                    elif kind == "pause":
                        sub.pause()
                        data.send_bytes(dumps(("paused", sink.take(), _status(sub, sink))))
                    elif kind == "rejoin":
                        sub.rejoin()
                    elif kind == "stop":
                        stopping = True
                        break
                    ready = control.poll(0)
            except (EOFError, OSError):  # the service is gone
                log.warning("network process: the service closed the pipe; stopping")
                break
            now = time.monotonic()
            if len(sink.items) >= batch_messages or now - last_flush >= flush_s:
                last_flush = now
                items = sink.take()
                status = _status(sub, sink)
                if items or status != last:
                    last = status
                    data.send_bytes(dumps(("batch", items, status)))
    finally:
        sub.stop()
        with contextlib.suppress(OSError):  # the service may be gone
            data.send_bytes(dumps(("stopped", sink.take(), _status(sub, sink))))


def _service_logging() -> tuple[int, list[tuple[logging.Formatter | None,
                                                  list[Any]]]]:
    """The service's log level and its stderr handlers' formatters and filters (JSON
    lines, secret redaction), for the network process to log the same way."""
    root = logging.getLogger()
    handlers = [(h.formatter, list(h.filters)) for h in root.handlers
                if isinstance(h, logging.StreamHandler)]
    try:
        pickle.dumps(handlers)
    except Exception:  # a formatter that cannot cross: plain lines rather than none
        handlers = []
    return root.getEffectiveLevel(), handlers


def _setup_child_logging(level: int,
                         handlers: list[tuple[logging.Formatter | None, list[Any]]]) -> None:
    root = logging.getLogger()
    root.setLevel(level)
    for formatter, filters in handlers or [(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"), [])]:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        for f in filters:
            handler.addFilter(f)
        root.addHandler(handler)


class ProcessSubscriber:
    """An :class:`MqttSubscriber` run in a network process; the same interface."""

    def __init__(self, options: MqttOptions, topics: Sequence[str], buffer: RawBuffer, *,
                 batch_messages: int = 2000, flush_s: float = 0.005) -> None:
        self.options = options
        self.topics = list(topics)
        self.buffer = buffer
        self.batch_messages = batch_messages
        self.flush_s = flush_s
        self.status = ChildStatus()
        self.subscribed = threading.Event()
        self.restarts = 0
        self._generation = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._data: Any = None
        self._control: Any = None
        self._send_lock = threading.Lock()
        self._paused = threading.Event()
        self._stopped = threading.Event()
        self._stopping = False
        self._reader: threading.Thread | None = None
        self._base = ChildStatus()  # counters of earlier network processes
        self._received = (0, 0)  # (generation, messages from it): one tuple, read at once
        self._credited = (0, 0)
        if buffer.limit:
            buffer.on_drain = self._credit

    # the MqttSubscriber attributes the service reads
    @property
    def connected(self) -> bool:
        """The network process holds a connection to the broker."""
        return self.status.connected

    @property
    def connects(self) -> int:
        """Connections made so far (all network processes)."""
        return self._base.connects + self.status.connects

    @property
    def session(self) -> int:
        """Number of the current connection."""
        return self.status.session

    @property
    def acked(self) -> int:
        """QoS 1/2 messages acknowledged (as last reported by the network process)."""
        return self._base.acked + self.status.acked

    @property
    def stale_acks(self) -> int:
        """Acks refused: their connection had gone."""
        return self._base.stale_acks + self.status.stale_acks

    @property
    def read_holds(self) -> int:
        """Times the network process stopped reading: the buffer was full."""
        return self._base.read_holds + self.status.read_holds

    @property
    def sessions_lost(self) -> int:
        """Connects that expected the persistent session on the broker and found none."""
        return self._base.sessions_lost + self.status.sessions_lost

    @property
    def sessions_taken_over(self) -> int:
        """Disconnects because another client connected with the service's client id."""
        return self._base.sessions_taken_over + self.status.sessions_taken_over

    @property
    def sessions_kept(self) -> int:
        """Connects that expected the persistent session and found it."""
        return self._base.sessions_kept + self.status.sessions_kept

    @property
    def yielded(self) -> bool:
        """The session was taken over by another node and the network process did not
        reconnect (``yield_on_takeover``)."""
        return self.status.yielded

    def rejoin(self) -> bool:
        """Ask the network process to connect again after yielding the session."""
        if not self.status.yielded:
            return False
        return self._send(("rejoin",))

    @property
    def pid(self) -> int | None:
        """Process id of the network process."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the network process and wait until it is connected (errors as
        :meth:`MqttSubscriber.start` raises them)."""
        self._spawn()
        self._receive_start()
        self._reader = threading.Thread(target=self._read, name="mqtt-net-reader", daemon=True)
        self._reader.start()

    def _spawn(self) -> None:
        """A fresh interpreter (not fork: the service has threads; not multiprocessing's
        spawn: it would import the embedding program's ``__main__`` again)."""
        self._generation = next(_GENERATIONS)
        self._received = (self._generation, 0)
        for old in (self._data, self._control):  # a dead process's pipes
            if old is not None:
                old.close()
        data_r, data_w = os.pipe()
        control_r, control_w = os.pipe()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)  # where ``ingest`` is importable
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "ingest.netproc", str(data_w), str(control_r)],
                pass_fds=(data_w, control_r), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(data_w)
            os.close(control_r)
        self._data, self._control = Connection(data_r, writable=False), Connection(
            control_w, readable=False)
        self._control.send((self.options, self.topics, self._generation, _service_logging(),
                            self.batch_messages, self.flush_s, self.buffer.limit))

    def _receive_start(self) -> None:
        """Wait for the new process's first message: connected, or the reason it is not
        (raised as :class:`BrokerRejectedError` / :class:`BrokerUnavailableError`)."""
        deadline = time.monotonic() + self.options.connect_timeout_s + 30
        assert self._process is not None
        while not self._data.poll(0.2):
            if self._process.poll() is not None and not self._data.poll(0):
                raise IngestError(f"the MQTT network process exited with code "
                                  f"{self._process.returncode} before connecting")
            if time.monotonic() > deadline:
                self._process.kill()
                self._wait_child(5)
                raise BrokerUnavailableError("the MQTT network process did not connect")
        try:
            message = pickle.loads(self._data.recv_bytes())  # noqa: S301 - our own child
        except (EOFError, OSError) as exc:
            raise IngestError(f"the MQTT network process exited with code "
                              f"{self._wait_child(5)} before connecting") from exc
        if message[0] == "error":
            self._wait_child(5)
            error = BrokerRejectedError if message[1] == "rejected" else BrokerUnavailableError
            raise error(message[2])
        self._apply(message[2])

    def _apply(self, status: ChildStatus) -> None:
        self.status = status
        if status.subscribed:
            self.subscribed.set()
        else:
            self.subscribed.clear()

    def _read(self) -> None:
        make = functools.partial(tuple.__new__, RawMessage)  # what RawMessage._make does, in C
        while True:
            try:
                kind, items, status = pickle.loads(  # noqa: S301 - our own child
                    self._data.recv_bytes())
            except (EOFError, OSError):
                if self._stopping:
                    self._stopped.set()
                    return
                self._restart()
                continue
            if items:
                self.buffer.extend(list(map(make, items)))
                generation, received = self._received
                self._received = (generation, received + len(items))  # after the extend
            self._apply(status)
            if kind == "paused":
                self.buffer.wake()
                self._paused.set()
            elif kind == "stopped":
                self._stopped.set()
                return

    def _restart(self) -> None:
        """The network process died: count what it did and start another."""
        code = self._wait_child(5)
        log.error("MQTT network process exited (code %s); starting it again", code)
        self._base = ChildStatus(connects=self.connects, acked=self.acked,
                                 stale_acks=self.stale_acks, read_holds=self.read_holds,
                                 sessions_lost=self.sessions_lost,
                                 sessions_taken_over=self.sessions_taken_over,
                                 sessions_kept=self.sessions_kept)
        if self.connects:  # an earlier connection made the session: the new one must find it
            self.options = replace(self.options, expect_session=True)
        self.status = ChildStatus()
        self.subscribed.clear()
        self.restarts += 1
        backoff = Backoff(base_s=1.0, max_s=self.options.reconnect_max_s)
        attempt = 0
        while not self._stopping:
            attempt += 1
            delay = backoff.delay(attempt)
            try:
                with self._send_lock:  # acks meanwhile go to the new process, which refuses
                    self._spawn()      # them (old connection); the writer never waits here
                self._receive_start()
                return
            except IngestError as exc:
                log.error("MQTT network process could not connect: %s; retrying in %.0fs",
                          exc, delay)
            time.sleep(delay)

    def _wait_child(self, timeout: float) -> int | None:
        """Reap the network process; its exit code, None if it is still running."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _send(self, command: tuple[Any, ...]) -> bool:
        with self._send_lock:
            try:
                self._control.send(command)
            except (OSError, ValueError):  # process gone: it is being restarted
                return False
        return True

    def _credit(self) -> None:
        """After a drain (the decoder's thread): tell the network process how many of its
        messages the decoder has taken."""
        generation, received = self._received  # before the length: never over-counts
        consumed = max(received - len(self.buffer), 0)
        if (generation, consumed) != self._credited:
            self._credited = (generation, consumed)
            self._send(("consumed", generation, consumed))

    def ack(self, messages: Sequence[RawMessage]) -> None:
        """Acknowledge QoS 1/2 messages once they are safe (see :meth:`MqttSubscriber.ack`)."""
        if not self.options.manual_ack:
            return
        acks = [(m.session, m.mid, m.qos) for m in messages if m.qos]
        if acks:
            self._send(("ack", acks))

    def pause(self) -> None:
        """Stop taking messages and wait until everything the network process took is in
        the buffer."""
        self._paused.clear()
        if self._send(("pause",)) and not self._paused.wait(10):
            log.warning("MQTT network process did not confirm the pause within 10 s")

    def stop(self) -> None:
        """Disconnect and end the network process (acks sent before this are flushed)."""
        self._stopping = True
        self._send(("stop",))
        if self._reader is not None:
            self._stopped.wait(15)
        if self._process is not None and self._wait_child(10) is None:
            log.error("MQTT network process did not stop; killing it")
            self._process.kill()
            self._wait_child(5)
        for conn in (self._data, self._control):
            if conn is not None:
                conn.close()
        st = self.status
        if st.deferred or st.dropped_at_shutdown:
            log.info("shutdown: %d QoS 1/2 messages left to the next session, %d QoS 0 "
                     "messages not taken", st.deferred, st.dropped_at_shutdown)


if __name__ == "__main__":
    # through the imported module: what it pickles must name ``ingest.netproc``, not __main__
    from ingest.netproc import child_main as _main

    _main(Connection(int(sys.argv[1]), readable=False), Connection(int(sys.argv[2]),
                                                                   writable=False))
