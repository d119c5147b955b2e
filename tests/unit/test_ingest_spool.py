"""On-disk spool and de-duplication window: order, bounds, restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.decode import Deduplicator
from ingest.spool import Spool, SpoolError


def test_spool_is_fifo_and_survives_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert spool.put(["a v=1 1", "a v=2 2"])
    assert spool.put(["b v=3 3"])
    assert len(spool) == 2 and spool.lines_in == 3
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)  # a restart of the service
    assert len(reopened) == 2 and reopened.bytes == spool.bytes
    first = reopened.peek()
    assert first is not None and first.lines == ["a v=1 1", "a v=2 2"]
    reopened.remove(first.seq)
    assert reopened.put(["c v=4 4"])  # new chunks queue behind the old ones
    second = reopened.peek()
    assert second is not None and second.lines == ["b v=3 3"]
    with pytest.raises(SpoolError, match="not the oldest"):
        reopened.remove(second.seq + 1)
    reopened.remove(second.seq)
    third = reopened.peek()
    assert third is not None and third.lines == ["c v=4 4"]
    reopened.remove(third.seq)
    assert reopened.peek() is None and reopened.bytes == 0 and reopened.lines_out == 4


def test_spool_refuses_what_does_not_fit_and_counts_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100, fsync=False)
    assert spool.put(["x" * 60])
    assert not spool.put(["y" * 60])
    assert spool.refused == 1 and len(spool) == 1 and spool.bytes == 61
    chunk = spool.peek()
    assert chunk is not None
    spool.remove(chunk.seq)
    assert spool.put(["y" * 60])


def test_spool_ignores_interrupted_writes_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "0000000000000007.tmp").write_text("half a chunk")
    (tmp_path / "README").write_text("not a chunk")
    (tmp_path / "0000000000000003.lp").write_text("m v=1 1\n")
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert len(spool) == 1
    assert not (tmp_path / "0000000000000007.tmp").exists()
    assert spool.put(["m v=2 2"])
    assert (tmp_path / "0000000000000004.lp").exists()


def test_spool_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="spool directory"):
        Spool(blocker / "spool", max_bytes=1 << 20)


def test_dedup_window_remembers_at_least_half_its_capacity() -> None:
    dedup = Deduplicator(capacity=6)
    assert [dedup.seen(k) for k in "abc"] == [False, False, False]
    assert dedup.seen("a") and dedup.seen("c")
    assert not dedup.seen("d")
    assert dedup.seen("a")  # the last 3 (half the capacity) are always remembered
    assert [dedup.seen(k) for k in "ef"] == [False, False]
    assert not dedup.seen("a")  # older than the window: forgotten (and remembered anew)
    assert dedup.seen("d") and dedup.seen("a")
    assert len(dedup) == 4
