"""Collector settings for the processes on the ingest hot path."""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 100)  # young generation every 50,000 allocations, not 700


def tune_gc_for_throughput() -> None:
    """Fewer garbage-collector passes in a long-running ingest process.

    Every message makes a few short-lived containers; with CPython's default
    thresholds the young generation is collected hundreds of times a second and the
    older ones (the raw buffer, the registry, the de-duplication window) are walked
    again and again: about a fifth of the service process's time at 50,000 msg/s.
    Objects alive after start-up are frozen out of collection. Called by
    ``lifeline serve`` (and the ingest benchmark) and by the MQTT network process.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
