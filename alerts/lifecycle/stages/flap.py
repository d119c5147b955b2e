"""Flap damping: a flapping alert is notified once until it calms down."""

from __future__ import annotations

from alerts.lifecycle.model import Alert
from alerts.lifecycle.stages.stage import NoiseContext


class FlapStage:
    """A flapping alert gets at most one notification until it calms down."""

    name = "flap"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            if a.flapping and a.notified_state != "":
                ctx.held[a.id] = "flapping"
                continue
            out.append(a)
        return out
