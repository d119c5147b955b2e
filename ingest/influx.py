"""InfluxDB writer: batched line protocol over a transport, in its own thread."""

from __future__ import annotations

import gzip
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from ingest.errors import WriteError

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
        retryable = resp.status_code >= 500 or resp.status_code in (408, 429)
        raise WriteError(
            f"InfluxDB write failed: HTTP {resp.status_code}: {resp.text[:300]}",
            retryable=retryable,
        )

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


@dataclass(slots=True)
class WriterStats:
    """What the writer has done so far."""

    lines_written: int = 0
    batches_written: int = 0
    write_failures: int = 0
    lines_dropped: int = 0
    last_latency_s: float = 0.0


class InfluxWriter:
    """Collects lines, writes them in chunks of ``batch_lines`` from its own thread.

    Retryable failures are retried with capped exponential backoff and jitter;
    ``on_written(n)`` is called after each successful chunk.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        batch_lines: int = 5000,
        flush_interval: float = 0.2,
        max_backoff: float = 10.0,
        on_written: Callable[[int], None] | None = None,
        on_rejected: Callable[[list[str], str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.batch_lines = batch_lines
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.stats = WriterStats()
        self._on_written = on_written
        self._on_rejected = on_rejected
        self._queue: queue.Queue[list[str]] = queue.Queue(maxsize=1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, lines: list[str]) -> None:
        """Queue lines for writing (blocks when the queue is full: back-pressure)."""
        if lines:
            self._queue.put(lines)

    def pending(self) -> int:
        """Chunks waiting in the queue."""
        return self._queue.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued (up to ``timeout``), then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 5)

    _deadline: float = float("inf")

    def _run(self) -> None:
        pending: list[str] = []
        last_flush = time.monotonic()
        while True:
            try:
                pending.extend(self._queue.get(timeout=self.flush_interval))
                while len(pending) < self.batch_lines:
                    pending.extend(self._queue.get_nowait())
            except queue.Empty:
                pass
            stopping = self._stop.is_set()
            due = time.monotonic() - last_flush >= self.flush_interval
            while pending and (len(pending) >= self.batch_lines or due or stopping):
                chunk, pending = pending[: self.batch_lines], pending[self.batch_lines :]
                if not self._write_with_retry(chunk):
                    self.stats.lines_dropped += len(chunk) + len(pending)
                    log.error("writer stopped with %d lines unwritten", len(chunk) + len(pending))
                    return
                last_flush = time.monotonic()
            if stopping and self._queue.empty() and not pending:
                return

    def _write_with_retry(self, chunk: list[str]) -> bool:
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                self.transport.write(chunk)
            except WriteError as exc:
                self.stats.write_failures += 1
                if not exc.retryable:
                    log.error("write rejected (%d lines): %s", len(chunk), exc)
                    if self._on_rejected:
                        self._on_rejected(chunk, str(exc))
                    return True
                if self._stop.is_set() and time.monotonic() > self._deadline:
                    return False
                log.warning("write failed, retrying in %.1fs: %s", delay, exc)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.max_backoff)
                continue
            self.stats.last_latency_s = time.perf_counter() - started
            self.stats.lines_written += len(chunk)
            self.stats.batches_written += 1
            if self._on_written:
                self._on_written(len(chunk))
            return True
