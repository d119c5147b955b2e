"""On-disk spool: line-protocol chunks kept while InfluxDB is unreachable.

Each chunk is one file ``<sequence>.lp`` in the spool directory, written to a
temporary name, fsynced and renamed, so a crash leaves either the whole chunk
or nothing. Chunks are replayed oldest first; the spool survives a restart of
the service. Its size is bounded: :meth:`Spool.put` refuses a chunk that does
not fit, and the writer then holds back acknowledgements (back-pressure).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ingest.errors import IngestError

log = logging.getLogger(__name__)

_SUFFIX = ".lp"


class SpoolError(IngestError):
    """The spool directory cannot be used."""


@dataclass(frozen=True, slots=True)
class SpoolChunk:
    """One spooled chunk: its sequence number and its lines."""

    seq: int
    lines: list[str]


class ChunkSpool(Protocol):
    """What the writer needs of a spool: on disk (:class:`Spool`) or in the service
    database (:class:`ingest.spool_db.DatabaseSpool`)."""

    lines_in: int
    lines_out: int
    refused: int

    def __len__(self) -> int:
        """Chunks held."""

    @property
    def bytes(self) -> int:
        """Bytes held."""

    def put(self, lines: list[str]) -> bool:
        """Append a chunk; False when it does not fit or cannot be stored."""

    def peek(self) -> SpoolChunk | None:
        """The oldest chunk."""

    def remove(self, seq: int) -> None:
        """Forget the oldest chunk ``seq``; raises :class:`SpoolError` when it cannot."""


class ChunkIndex:
    """The bookkeeping both spools share: ``(seq, size)`` of the chunks held, oldest
    first, their total size and the line counters."""

    def __init__(self, max_bytes: int, chunks: list[tuple[int, int]]) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._chunks = chunks
        self._bytes = sum(size for _, size in chunks)
        self.lines_in = 0
        self.lines_out = 0
        self.refused = 0

    def __len__(self) -> int:
        """Chunks in the spool."""
        return len(self._chunks)

    @property
    def bytes(self) -> int:
        """Bytes held."""
        return self._bytes

    def _oldest(self) -> int | None:
        with self._lock:
            return self._chunks[0][0] if self._chunks else None

    def _added(self, seq: int, size: int, lines: int) -> None:
        """Record a stored chunk (under the lock)."""
        self._chunks.append((seq, size))
        self._bytes += size
        self.lines_in += lines


class Spool(ChunkIndex):
    """A bounded FIFO of line-protocol chunks on disk."""

    def __init__(self, directory: Path, max_bytes: int, *, fsync: bool = True) -> None:
        self.directory = directory
        self._fsync = fsync
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for tmp in directory.glob("*.tmp"):  # a write interrupted by a crash
                tmp.unlink()
            found = sorted(
                (int(p.stem), p.stat().st_size, p) for p in directory.glob(f"*{_SUFFIX}")
                if p.stem.isdigit()
            )
        except OSError as exc:
            raise SpoolError(f"spool directory {directory}: {exc}") from exc
        super().__init__(max_bytes, [(seq, size) for seq, size, _ in found])
        self._next = (self._chunks[-1][0] + 1) if self._chunks else 1
        if self._chunks:
            log.info("spool %s: %d chunks (%d bytes) left from a previous run",
                     directory, len(self._chunks), self._bytes)

    def put(self, lines: list[str]) -> bool:
        """Append a chunk; False (and nothing written) when it would exceed ``max_bytes``."""
        body = ("\n".join(lines) + "\n").encode()
        with self._lock:
            if self._bytes + len(body) > self.max_bytes:
                self.refused += 1
                return False
            seq = self._next
            path = self._path(seq)
            tmp = path.with_suffix(".tmp")
            try:
                with tmp.open("wb") as fh:
                    fh.write(body)
                    if self._fsync:
                        fh.flush()
                        os.fsync(fh.fileno())
                tmp.rename(path)
                if self._fsync:  # make the rename itself durable
                    dir_fd = os.open(self.directory, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
            except OSError as exc:
                log.error("spool %s: cannot write chunk %d: %s", self.directory, seq, exc)
                tmp.unlink(missing_ok=True)
                self.refused += 1
                return False
            self._next += 1
            self._added(seq, len(body), len(lines))
            return True

    def peek(self) -> SpoolChunk | None:
        """The oldest chunk, or None when the spool is empty."""
        seq = self._oldest()
        if seq is None:
            return None
        try:
            text = self._path(seq).read_text("utf-8")
        except OSError as exc:
            raise SpoolError(f"spool chunk {seq}: {exc}") from exc
        return SpoolChunk(seq, [line for line in text.split("\n") if line])

    def remove(self, seq: int) -> None:
        """Forget chunk ``seq`` once it is stored (must be the oldest)."""
        with self._lock:
            if not self._chunks or self._chunks[0][0] != seq:
                raise SpoolError(f"spool chunk {seq} is not the oldest")
            _, size = self._chunks.pop(0)
            self._bytes -= size
            path = self._path(seq)
        lines = 0
        try:
            with path.open("rb") as fh:
                lines = fh.read().count(b"\n")
            path.unlink()
        except OSError as exc:
            log.error("spool %s: cannot remove chunk %d: %s", self.directory, seq, exc)
        self.lines_out += lines

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}{_SUFFIX}"
