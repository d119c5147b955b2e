"""Muting: silences and maintenance windows hold the firing alerts they match (the
matching itself is :func:`alerts.silences.matching.matches`)."""

from __future__ import annotations

from alerts.lifecycle.model import Alert, AlertState
from alerts.lifecycle.stages.stage import NoiseContext
from alerts.silences.matching import matches


class SilenceStage:
    """Holds firing alerts matched by an active silence or maintenance window."""

    name = "silence"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            hit = next((s for s in ctx.silences if matches(s, a)), None)
            if a.state is AlertState.FIRING and hit is not None:
                ctx.held[a.id] = f"{hit.kind.value}:{hit.id}"
                continue
            out.append(a)
        return out
