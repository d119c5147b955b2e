"""InfluxDB writer: batched line protocol over a transport, in its own thread."""

from __future__ import annotations

import bisect
import gzip
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from common.retry import Backoff
from ingest.errors import WriteError
from ingest.spool import ChunkSpool, SpoolError

log = logging.getLogger(__name__)


class Transport(Protocol):
    """Sends lines of line protocol to one database; raises :class:`WriteError`."""

    def write(self, lines: list[str]) -> None:
        """Write ``lines`` (ns precision)."""
        ...

    def ping(self) -> None:
        """Raise :class:`WriteError` unless the server answers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _status_error(where: str, status: int, text: str) -> WriteError:
    """Classify an HTTP error: 400/413 are the lines' fault, the rest may heal."""
    kind = (WriteError.LINES if status in (400, 413, 422)
            else WriteError.RETRY)
    return WriteError(f"{where} write failed: HTTP {status}: {text[:300]}",
                      retryable=kind == WriteError.RETRY, bad_lines=kind == WriteError.LINES)


class InfluxV1Transport:
    """InfluxDB 1.x ``/write`` with database, retention policy and basic auth."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        retention_policy: str = "",
        username: str = "",
        password: str = "",
        gzip_body: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self._params = {"db": database, "precision": "ns"}
        if retention_policy:
            self._params["rp"] = retention_policy
        auth = (username, password) if username else None
        self._gzip = gzip_body
        self._client = httpx.Client(timeout=timeout, auth=auth)

    def write(self, lines: list[str]) -> None:
        """POST the lines; 5xx, 429 and connection errors are retryable."""
        body = "\n".join(lines).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            resp = self._client.post(
                f"{self.url}/write", params=self._params, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise WriteError(f"InfluxDB at {self.url} unreachable: {exc}", retryable=True) from exc
        if resp.status_code == 204:
            return
        raise _status_error("InfluxDB", resp.status_code, resp.text)

    def ping(self) -> None:
        """GET /ping."""
        try:
            resp = self._client.get(f"{self.url}/ping")
        except httpx.HTTPError as exc:
            raise WriteError(f"InfluxDB at {self.url} unreachable: {exc}", retryable=True) from exc
        if resp.status_code != 204:
            raise WriteError(f"InfluxDB ping: HTTP {resp.status_code}", retryable=True)

    def create_database(self) -> None:
        """Create the database if it does not exist (idempotent in InfluxDB 1.x)."""
        try:
            resp = self._client.post(
                f"{self.url}/query", params={"q": f'CREATE DATABASE "{self.database}"'}
            )
        except httpx.HTTPError as exc:
            raise WriteError(f"InfluxDB at {self.url} unreachable: {exc}", retryable=True) from exc
        if resp.status_code != 200:
            raise WriteError(f"CREATE DATABASE: HTTP {resp.status_code}", retryable=False)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


class InfluxV2Transport:
    """InfluxDB 2.x/3.x (and any server with the v2 write API) through influxdb-client."""

    def __init__(
        self,
        url: str,
        *,
        org: str,
        bucket: str,
        token: str,
        gzip_body: bool = False,
        timeout: float = 10.0,
    ) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415
        from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415

        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self._client = InfluxDBClient(url=self.url, token=token, org=org,
                                      enable_gzip=gzip_body, timeout=int(timeout * 1000))
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        """Write through the v2 API; 5xx, 429, 401/403/404 and connection errors retry."""
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415
        from influxdb_client.rest import ApiException  # noqa: PLC0415

        try:
            self._write_api.write(bucket=self.bucket, org=self.org, record="\n".join(lines),
                                  write_precision=WritePrecision.NS)  # type: ignore[arg-type]
        except ApiException as exc:
            raise _status_error("InfluxDB v2", int(exc.status or 0),
                                str(exc.body or exc.reason)) from exc
        except Exception as exc:  # urllib3 connection errors and timeouts
            raise WriteError(f"InfluxDB at {self.url} unreachable: {exc}", retryable=True) from exc

    def ping(self) -> None:
        """GET /ping (or /health when /ping is not offered)."""
        try:
            resp = httpx.get(f"{self.url}/ping", timeout=5)
            if resp.status_code == 404:
                resp = httpx.get(f"{self.url}/health", timeout=5)
        except httpx.HTTPError as exc:
            raise WriteError(f"InfluxDB at {self.url} unreachable: {exc}", retryable=True) from exc
        if resp.status_code not in (200, 204):
            raise WriteError(f"InfluxDB ping: HTTP {resp.status_code}", retryable=True)

    def close(self) -> None:
        """Close the client."""
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


Callback = Callable[[], None]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


@dataclass(slots=True)
class WriterStats:
    """What the writer has done so far (read by the metrics collector)."""

    lines_written: int = 0
    batches_written: int = 0
    write_failures: int = 0
    lines_spooled: int = 0
    lines_replayed: int = 0
    lines_rejected: int = 0
    lines_dropped: int = 0
    blocked_s: float = 0.0  # time spent with a full spool and InfluxDB down
    last_latency_s: float = 0.0
    latency_sum_s: float = 0.0
    latency_buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))


class InfluxWriter:
    """Collects lines, writes them in chunks of ``batch_lines`` from its own thread.

    Every chunk ends in InfluxDB, in the spool, or (lines InfluxDB refuses as
    malformed) with ``on_rejected``. The callback given with :meth:`submit` runs,
    in submission order, once all lines submitted up to it are in one of those
    places: the service acknowledges MQTT messages from it. A retryable failure
    is retried ``retries`` times with capped exponential backoff and jitter, then
    the chunk goes to the spool; while the spool holds chunks, new chunks queue
    behind them and the oldest is retried until InfluxDB answers. When the spool
    is full the writer waits, callbacks stop, and the queue fills (back-pressure).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        batch_lines: int = 5000,
        flush_interval: float = 0.2,
        max_backoff: float = 10.0,
        retries: int = 3,
        spool: ChunkSpool | None = None,
        queue_chunks: int = 200,
        on_written: Callable[[int], None] | None = None,
        on_rejected: Callable[[list[str], str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.batch_lines = batch_lines
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.retries = retries
        self.spool = spool
        self.stats = WriterStats()
        self._on_written = on_written
        self._on_rejected = on_rejected
        self._queue: queue.Queue[tuple[list[str], Callback | None]] = queue.Queue(
            maxsize=queue_chunks)
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._retry_at = 0.0
        # consecutive failed writes; the wait doubles from 0.1 s with each, up to max_backoff
        # (sleeps between retries of one chunk at most 1 s), jitter 50-150 %
        self._failures = 0
        self._backoff = Backoff(base_s=0.2, max_s=max_backoff, jitter=(0.5, 1.5))
        self._short_backoff = self._backoff.capped(1.0)
        self.influx_up = True

    @property
    def _delay(self) -> float:
        """The current wait without jitter (0.1 s before any failure)."""
        return self._backoff.nominal(self._failures)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, lines: list[str], on_durable: Callback | None = None) -> None:
        """Queue lines; blocks while the queue is full (back-pressure).

        ``on_durable`` runs in the writer thread once these lines (and every line
        submitted before them) are stored, spooled or rejected.
        """
        if lines or on_durable is not None:
            self._queue.put((lines, on_durable))

    def pending(self) -> int:
        """Submissions waiting in the queue."""
        return self._queue.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Write or spool what is queued (trying up to ``timeout``), then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 10)

    # -- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        pending: list[str] = []
        callbacks: list[tuple[int, Callback]] = []  # (lines of pending before it, callback)
        last_flush = time.monotonic()
        while True:
            try:
                lines, cb = self._queue.get(timeout=self.flush_interval)
                pending.extend(lines)
                if cb is not None:
                    callbacks.append((len(pending), cb))
                while len(pending) < self.batch_lines:
                    lines, cb = self._queue.get_nowait()
                    pending.extend(lines)
                    if cb is not None:
                        callbacks.append((len(pending), cb))
            except queue.Empty:
                pass
            stopping = self._stop.is_set()
            if self.spool is not None and len(self.spool):
                self._replay_spool(stopping)
            due = time.monotonic() - last_flush >= self.flush_interval
            done = 0
            while done < len(pending) and (
                len(pending) - done >= self.batch_lines or due or stopping
            ):
                chunk = pending[done: done + self.batch_lines]
                if not self._store(chunk, stopping):
                    lost = len(pending) - done
                    self.stats.lines_dropped += lost
                    log.error("writer stopped with %d lines neither written nor spooled "
                              "(their MQTT messages were not acknowledged)", lost)
                    return
                done += len(chunk)
                last_flush = time.monotonic()
            if done:
                del pending[:done]
            if callbacks:
                fired = 0
                for upto, cb in callbacks:
                    if upto > done:
                        break
                    self._call(cb)
                    fired += 1
                callbacks = [(upto - done, cb) for upto, cb in callbacks[fired:]]
            if stopping and self._queue.empty() and not pending:
                if self.spool is not None and len(self.spool):
                    log.warning("writer stopped with %d chunks in the spool (kept on disk)",
                                len(self.spool))
                return

    def _call(self, cb: Callback) -> None:
        try:
            cb()
        except Exception:
            log.exception("writer callback failed")

    def _store(self, chunk: list[str], stopping: bool) -> bool:
        """Write, or spool, or wait for room: False only when stopping ran out of time."""
        if self.spool is not None and len(self.spool):
            # Keep the order: new chunks queue behind the spooled ones.
            return self._spool_or_wait(chunk, stopping)
        if self._write_with_retry(chunk, self.retries):
            return True
        if self.spool is None:
            return self._wait_and_write(chunk)
        return self._spool_or_wait(chunk, stopping)

    def _spool_or_wait(self, chunk: list[str], stopping: bool) -> bool:
        assert self.spool is not None
        blocked_since = time.monotonic()
        warned = False
        while not self.spool.put(chunk):
            # Spool full: try to drain it; meanwhile nothing is acknowledged.
            if not warned:
                log.warning("spool full (%d bytes): holding acknowledgements until InfluxDB "
                            "answers", self.spool.bytes)
                warned = True
            self._replay_spool(stopping, force=True)
            if not len(self.spool):
                ok = self._write_with_retry(chunk, self.retries)
                if ok:
                    self.stats.blocked_s += time.monotonic() - blocked_since
                    return True
            if self._stop.is_set() and time.monotonic() > self._deadline:
                return False
            time.sleep(self._short_backoff.nominal(self._failures))
        self.stats.blocked_s += time.monotonic() - blocked_since if warned else 0.0
        self.stats.lines_spooled += len(chunk)
        return True

    def _wait_and_write(self, chunk: list[str]) -> bool:
        while True:
            if self._write_with_retry(chunk, 0):
                return True
            if self._stop.is_set() and time.monotonic() > self._deadline:
                return False
            time.sleep(self._backoff.delay(self._failures))

    def _replay_spool(self, stopping: bool, force: bool = False) -> None:
        """Write spooled chunks oldest first while InfluxDB answers."""
        assert self.spool is not None
        while len(self.spool):
            now = time.monotonic()
            if now < self._retry_at and not force:
                return
            force = False
            try:
                chunk = self.spool.peek()
            except SpoolError:
                log.exception("spool chunk unreadable")
                return
            if chunk is None:
                return
            if not self._write_with_retry(chunk.lines, 0):
                self._retry_at = time.monotonic() + self._delay
                return
            try:
                self.spool.remove(chunk.seq)
            except SpoolError:  # kept: replayed again later (rewriting a point is harmless)
                log.exception("spool chunk %d written but not removed", chunk.seq)
                self._retry_at = time.monotonic() + self._delay
                return
            self.stats.lines_replayed += len(chunk.lines)
            if stopping and time.monotonic() > self._deadline:
                return

    def _write_with_retry(self, chunk: list[str], retries: int) -> bool:
        """True when stored (or rejected as malformed); False when InfluxDB stays away."""
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                self.transport.write(chunk)
            except WriteError as exc:
                self.stats.write_failures += 1
                if exc.bad_lines:
                    self._split(chunk, exc)
                    self._up()
                    return True
                self._failures += 1
                if self.influx_up:
                    log.warning("InfluxDB write failed (%d lines): %s", len(chunk), exc)
                self.influx_up = False
                if attempt >= retries or (self._stop.is_set()
                                          and time.monotonic() > self._deadline):
                    return False
                attempt += 1
                time.sleep(self._short_backoff.delay(self._failures))
                continue
            self._written(len(chunk), time.perf_counter() - started)
            self._up()
            return True

    def _up(self) -> None:
        if not self.influx_up:
            log.info("InfluxDB answers again")
        self.influx_up = True
        self._failures = 0
        self._retry_at = 0.0

    def _written(self, n: int, latency: float) -> None:
        st = self.stats
        st.last_latency_s = latency
        st.latency_sum_s += latency
        st.lines_written += n
        st.batches_written += 1
        st.latency_buckets[bisect.bisect_left(LATENCY_BUCKETS, latency)] += 1
        if self._on_written:
            self._on_written(n)

    def _split(self, chunk: list[str], exc: WriteError) -> None:
        """InfluxDB refused some lines: bisect until the bad ones are alone.

        Rewriting a good line is harmless (same series, time and value).
        """
        if len(chunk) == 1:
            self.stats.lines_rejected += 1
            log.error("InfluxDB rejected a line: %s: %.200s", exc, chunk[0])
            if self._on_rejected:
                self._on_rejected(chunk, str(exc))
            return
        mid = len(chunk) // 2
        for half in (chunk[:mid], chunk[mid:]):
            if self._write_with_retry(half, self.retries):
                continue
            # The server went away in the middle of the split: keep the half like any chunk.
            stored = (self._spool_or_wait(half, False) if self.spool is not None
                      else self._wait_and_write(half))
            if not stored:
                self.stats.lines_dropped += len(half)
                log.error("writer stopping: %d lines of a split chunk neither written nor "
                          "spooled", len(half))
