"""InfluxDB line protocol built from whole batches (the device-type measurements of
:mod:`tsdb.schema`; each series' ``measurement,tags metric=`` prefix is built once by
:class:`devices.series.SeriesTable` through the schema's encoder)."""

from __future__ import annotations

from devices.series import SeriesTable
from ingest.batch import Batch
from tsdb.schema import FLAGS

__all__ = ["batch_lines"]

_FLAGS = FLAGS.name


def batch_lines(batch: Batch, series: SeriesTable) -> list[str]:
    """One line per row: ``measurement,tags metric=value[,flags=Ni] point_ns``.

    The rows of one reading share its point time and merge into one InfluxDB point;
    distinct readings of a device have distinct point times (``Batch.point_ns``).
    """
    prefixes = series.line_prefixes
    sids = batch.series.tolist()
    values = batch.value.tolist()
    stamps = batch.stored_ns.tolist()
    if not batch.flags.any():
        return [f"{prefixes[s]}{v!r} {t}" for s, v, t in zip(sids, values, stamps, strict=True)]
    flags = batch.flags.tolist()
    return [
        f"{prefixes[s]}{v!r},{_FLAGS}={f}i {t}" if f else f"{prefixes[s]}{v!r} {t}"
        for s, v, f, t in zip(sids, values, flags, stamps, strict=True)
    ]
