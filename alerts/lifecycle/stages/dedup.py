"""De-duplication: one notification per state (and severity) change."""

from __future__ import annotations

from alerts.lifecycle.model import Alert, AlertState
from alerts.lifecycle.stages.stage import NoiseContext


class DedupStage:
    """Drops alerts whose state was already notified; waits ``resolve_delay`` before a
    resolved notification (a re-fire in between is no news); a resolved alert that was
    never notified is consumed silently."""

    name = "dedup"

    def apply(self, ctx: NoiseContext, candidates: list[Alert]) -> list[Alert]:
        """See the class docstring."""
        out = []
        for a in candidates:
            if a.state is AlertState.PENDING:
                continue
            if a.state is AlertState.RESOLVED:
                if a.notified_state in ("", AlertState.RESOLVED.value):
                    if a.notified_state == "":
                        ctx.consumed.add(a.id)
                    continue
                if ctx.now_ns - (a.resolved_ns or a.changed_ns) < ctx.config.resolve_delay_ns:
                    ctx.held[a.id] = "resolve_delay"
                    continue
            elif (a.notified_state == AlertState.FIRING.value
                  and a.notified_severity == a.severity.value):
                continue
            out.append(a)
        return out
