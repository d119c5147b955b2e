"""Fleet runner on aiomqtt: publish a scenario over MQTT, in real or accelerated time.

Two modes:
- ``devices``: every device has its own MQTT connection with its own will
  (``offline``, retained, on its ``status`` topic) and announces ``online``;
  an ``offline`` incident with a will drops the connection without DISCONNECT
  so the broker publishes the will, and the device reconnects when it ends.
- ``gateway``: one connection publishes for every device, batching each
  device's readings into JSON arrays (as field gateways and backfill do).

Simulated time maps to wall time as ``start + (t - scenario_start) / speed``;
``speed = 0`` publishes as fast as the broker takes it.

``hooks`` run at given simulated times, between messages (an evaluation stops and
restarts the broker for a ``broker_outage``). In ``gateway`` mode a lost connection is
re-established and publishes that failed are sent again (for up to ``retry_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiomqtt
import orjson

from devices.topics import TopicKind, TopicScheme
from simulators.stream import CityRun, SimMessage

log = logging.getLogger(__name__)
# Called about every PROGRESS_S wall seconds with the stats and the simulated time reached.
ProgressFn = Callable[["RunnerStats", float], None]
PROGRESS_S = 0.5
# aiomqtt warns on every burst of pending publishes; a fleet has thousands by design.
_mqtt_log = logging.getLogger(f"{__name__}.mqtt")
_mqtt_log.setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """Where and how to publish."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "lifeline"
    speed: float = 1.0
    mode: Literal["devices", "gateway"] = "devices"
    qos: int = 1
    connect_concurrency: int = 200
    in_flight: int = 2000
    gateway_window_s: float = 5.0  # simulated seconds a gateway buffers a device's readings
    keepalive_s: int = 60
    retry_s: float = 120.0  # gateway: how long a failed publish is retried (wall seconds)


@dataclass(slots=True)
class RunnerStats:
    """What the runner did."""

    connected: int = 0
    messages: int = 0  # acknowledged by the broker (QoS >= 1) or sent (QoS 0)
    values: int = 0  # metric values in those messages
    malformed: int = 0
    wills_triggered: int = 0
    failed: int = 0
    retried: int = 0  # publishes sent again after a reconnect
    reconnects: int = 0
    elapsed_s: float = 0.0
    per_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class FleetRunner:
    """Publishes a :class:`CityRun`'s messages through aiomqtt clients."""

    def __init__(self, run: CityRun, options: RunnerOptions,
                 hooks: Sequence[tuple[float, Callable[[], None]]] = (),
                 progress: ProgressFn | None = None) -> None:
        self.run = run
        self.progress = progress
        self.sim_now_s = run.start_s  # simulated time of the message being published
        self.options = options
        self._hooks = sorted(hooks, key=lambda h: h[0])
        self._gateway: aiomqtt.Client | None = None
        self._gateway_lock = asyncio.Lock()
        self.scheme = TopicScheme(options.prefix)
        self.stats = RunnerStats()
        self._clients: dict[str, aiomqtt.Client] = {}
        self._stacks: dict[str, contextlib.AsyncExitStack] = {}
        self._sem = asyncio.Semaphore(options.in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_client: dict[asyncio.Task[None], aiomqtt.Client] = {}

    def _client(self, client_id: str, will_topic: str | None) -> aiomqtt.Client:
        will = (aiomqtt.Will(will_topic, b"offline", qos=1, retain=True)
                if will_topic else None)
        return aiomqtt.Client(self.options.host, self.options.port, identifier=client_id,
                              will=will, keepalive=self.options.keepalive_s,
                              max_queued_outgoing_messages=0, timeout=30, logger=_mqtt_log)

    async def _connect(self, device_id: str) -> None:
        status = self.scheme.topic(device_id, TopicKind.STATUS)
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(self._client(f"sim-{device_id}", status))
        self._clients[device_id] = client
        self._stacks[device_id] = stack
        self.stats.connected += 1
        await client.publish(status, b"online", qos=1, retain=True)

    async def _drop(self, device_id: str) -> None:
        """Lose the connection without DISCONNECT: the broker publishes the will."""
        client = self._clients.pop(device_id, None)
        stack = self._stacks.pop(device_id, None)
        if client is None or stack is None:
            return
        # What the device sent before its radio died has left it: let those complete.
        mine = [t for t, c in self._task_client.items() if c is client]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)
        # A dead radio, not a clean close: shut the TCP connection down under paho so no
        # DISCONNECT is sent and the broker publishes the will. (shutdown, not close: the
        # event loop still watches the file descriptor.)
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.stats.wills_triggered += 1
        with contextlib.suppress(Exception):
            await stack.aclose()

    async def run_async(self, stop: asyncio.Event | None = None) -> RunnerStats:
        """Connect, publish every message at its time, disconnect."""
        stop = stop or asyncio.Event()
        opts = self.options
        started = time.monotonic()
        gateway: aiomqtt.Client | None = None
        outer = contextlib.AsyncExitStack()
        try:
            if opts.mode == "gateway":
                gateway = self._client("sim-gateway", None)
                await gateway.__aenter__()
                self._gateway = gateway
                self.stats.connected = 1
            else:
                gate = asyncio.Semaphore(opts.connect_concurrency)

                async def connect(device_id: str) -> None:
                    async with gate:
                        await self._connect(device_id)

                await asyncio.gather(*(connect(d.id) for d in self.run.layout.devices))
            log.info("fleet connected: %d connections in %.1fs", self.stats.connected,
                     time.monotonic() - started)
            wall0 = time.monotonic()
            if self.progress is not None:
                outer.push_async_callback(_cancel, asyncio.ensure_future(self._report()))
            buffers: dict[str, list[SimMessage]] = defaultdict(list)
            last_flush = self.run.start_s
            hooks = list(self._hooks)
            for chunk in self.run.chunks():
                for msg in chunk:
                    if stop.is_set():
                        break
                    self.sim_now_s = msg.send_s
                    while hooks and hooks[0][0] <= msg.send_s:
                        if gateway is not None:
                            self._flush_gateway(gateway, buffers)
                        await self._hook(hooks.pop(0), wall0)
                    if opts.speed > 0:
                        due = wall0 + (msg.send_s - self.run.start_s) / opts.speed
                        delay = due - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    if gateway is not None:
                        if msg.kind is TopicKind.TELEMETRY and not msg.malformed:
                            buffers[msg.device_id].append(msg)
                            if msg.send_s - last_flush >= opts.gateway_window_s:
                                self._flush_gateway(gateway, buffers)
                                last_flush = msg.send_s
                        elif msg.kind is not TopicKind.STATUS:
                            self._publish(gateway, msg.device_id, msg.kind, msg.payload,
                                          msg.readings, malformed=msg.malformed)
                        continue
                    await self._device_message(msg)
                if stop.is_set():
                    break
            if gateway is not None:
                self._flush_gateway(gateway, buffers)
            for hook in hooks:  # e.g. the end of an outage that lasts to the end
                await self._hook(hook, wall0)
            await self._drain()
        finally:
            for stack in list(self._stacks.values()):
                with contextlib.suppress(Exception):
                    await stack.aclose()
            with contextlib.suppress(Exception):
                await outer.aclose()
            if self._gateway is not None:
                with contextlib.suppress(Exception):
                    await self._gateway.__aexit__(None, None, None)
            self.stats.elapsed_s = time.monotonic() - started
        return self.stats

    async def _report(self) -> None:
        assert self.progress is not None
        while True:
            await asyncio.sleep(PROGRESS_S)
            self.progress(self.stats, self.sim_now_s)

    async def _hook(self, hook: tuple[float, Callable[[], None]], wall0: float) -> None:
        """Run a hook at its simulated time (in a thread: it may block, e.g. on a broker)."""
        at, fn = hook
        if self.options.speed > 0:
            delay = wall0 + (at - self.run.start_s) / self.options.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.get_running_loop().run_in_executor(None, fn)

    async def _reconnect_gateway(self, failed: aiomqtt.Client, deadline: float) -> None:
        """A new gateway connection, unless another publish has made one already."""
        async with self._gateway_lock:
            if self._gateway is not failed:
                return
            lost = failed._disconnected  # private, as above
            if lost.done() and not lost.cancelled():
                log.warning("gateway connection lost: %s", lost.exception())
            with contextlib.suppress(Exception):
                await failed.__aexit__(None, None, None)
            while True:
                client = self._client("sim-gateway", None)
                try:
                    await client.__aenter__()
                except aiomqtt.MqttError:
                    if time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                self._gateway = client
                self.stats.reconnects += 1
                log.info("gateway reconnected (#%d)", self.stats.reconnects)
                return

    async def _publish_or_lost(self, client: aiomqtt.Client, topic: str, payload: bytes
                               ) -> None:
        """Publish; fail as soon as the connection is lost (aiomqtt would wait out its
        timeout for the acknowledgement of a publish in flight)."""
        pub = asyncio.ensure_future(client.publish(topic, payload, qos=self.options.qos))
        lost = client._disconnected  # private: aiomqtt's "connection lost" future
        done, _ = await asyncio.wait({pub, lost}, return_when=asyncio.FIRST_COMPLETED)
        if pub in done:
            pub.result()
            return
        pub.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await pub
        raise aiomqtt.MqttError("connection lost before the broker acknowledged")

    async def _device_message(self, msg: SimMessage) -> None:
        if msg.kind is TopicKind.STATUS:
            if msg.payload == b"offline":
                await self._drop(msg.device_id)
            elif msg.device_id not in self._clients:
                await self._connect(msg.device_id)
            return
        client = self._clients.get(msg.device_id)
        if client is None:  # offline: the device cannot send
            return
        self._publish(client, msg.device_id, msg.kind, msg.payload, msg.readings,
                      malformed=msg.malformed)

    def _flush_gateway(self, gateway: aiomqtt.Client,
                       buffers: dict[str, list[SimMessage]]) -> None:
        for device_id, msgs in buffers.items():
            if not msgs:
                continue
            # readings forwarded after an outage are an array already
            body = b"[" + b",".join(m.payload[1:-1] if m.forwarded else m.payload
                                    for m in msgs) + b"]"
            self._publish(gateway, device_id, TopicKind.TELEMETRY, body,
                          sum(m.readings for m in msgs), count=len(msgs))
        buffers.clear()

    def _publish(self, client: aiomqtt.Client, device_id: str, kind: TopicKind, payload: bytes,
                 readings: int, *, malformed: bool = False, count: int = 1) -> None:
        task = asyncio.ensure_future(
            self._send(client, self.scheme.topic(device_id, kind), payload, readings,
                       kind, malformed, count))
        self._tasks.add(task)
        self._task_client[task] = client
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._task_client.pop(task, None)

    async def _send(self, client: aiomqtt.Client, topic: str, payload: bytes, readings: int,
                    kind: TopicKind, malformed: bool, count: int) -> None:
        async with self._sem:
            deadline = time.monotonic() + self.options.retry_s
            while True:
                gateway = self.options.mode == "gateway" and self._gateway is not None
                if gateway and self._gateway is not None:
                    client = self._gateway  # the current connection (after a reconnect)
                try:
                    if gateway:
                        await self._publish_or_lost(client, topic, payload)
                    else:
                        await client.publish(topic, payload, qos=self.options.qos)
                    break
                except aiomqtt.MqttError as exc:
                    if not gateway or time.monotonic() >= deadline:
                        self.stats.failed += 1
                        log.warning("publish to %s failed: %s", topic, exc)
                        return
                    try:
                        await self._reconnect_gateway(client, deadline)
                    except aiomqtt.MqttError as again:
                        self.stats.failed += 1
                        log.warning("publish to %s failed: %s", topic, again)
                        return
                    self.stats.retried += 1
        self.stats.messages += 1
        self.stats.values += readings
        self.stats.malformed += int(malformed)
        self.stats.per_kind[kind.value] += count

    async def _drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_fleet(run: CityRun, options: RunnerOptions,
              hooks: Sequence[tuple[float, Callable[[], None]]] = (),
              progress: ProgressFn | None = None) -> RunnerStats:
    """Run the fleet to the end of the scenario (blocking); ``hooks`` at simulated times,
    ``progress`` now and then (e.g. a :class:`lifeline.progress.Progress` on stderr)."""
    return asyncio.run(FleetRunner(run, options, hooks, progress).run_async())


def stats_json(stats: RunnerStats) -> bytes:
    """The stats as JSON."""
    return orjson.dumps({
        "connected": stats.connected, "messages": stats.messages, "values": stats.values,
        "malformed": stats.malformed, "wills_triggered": stats.wills_triggered,
        "failed": stats.failed, "retried": stats.retried, "reconnects": stats.reconnects,
        "elapsed_s": round(stats.elapsed_s, 3),
        "per_kind": dict(stats.per_kind),
    })
