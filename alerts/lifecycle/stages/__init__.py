"""Noise control stages behind one protocol (:class:`~alerts.lifecycle.stages.stage.Stage`),
one module per stage, run in the order of :func:`default_stages`."""

from __future__ import annotations

from alerts.lifecycle.stages.dedup import DedupStage
from alerts.lifecycle.stages.flap import FlapStage
from alerts.lifecycle.stages.inhibit import InhibitStage
from alerts.lifecycle.stages.mute import SilenceStage
from alerts.lifecycle.stages.stage import Stage


def default_stages() -> list[Stage]:
    """De-duplication, flap detection, silences/maintenance, inhibition — in that order."""
    return [DedupStage(), FlapStage(), SilenceStage(), InhibitStage()]
