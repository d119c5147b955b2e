"""Messages from outbox payloads: Jinja2 templates (Chinese by default; the operator's
``template_dir`` is looked up first), with what a reader needs on a phone: what, where
(grid, address, map link), how bad (value vs limit), since when, the case, its deadline,
links."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from alerts.notify.model import ChannelError, Message

if TYPE_CHECKING:
    from devices.registry import DeviceLookup

BUILTIN_DIR = Path(__file__).with_name("templates")
SEVERITY_ZH = {"critical": "紧急", "major": "重要", "minor": "次要", "warning": "警告",
               "info": "提示"}
EVENT_ZH = {"alert.firing": "告警", "alert.resolved": "已恢复", "case.reported": "案件上报",
            "case.updated": "案件更新", "case.dispatched": "案件派遣",
            "case.escalated": "案件督办", "case.closed": "案件结案"}
STATE_ZH = {"reported": "上报", "registered": "已立案", "dispatched": "已派遣",
            "in_progress": "处置中", "handled": "处置完成", "verified": "已核查",
            "closed": "已结案", "cancelled": "已撤销", "returned": "已退回", "rework": "返工"}
TYPE_ZH = {"gas_alarm": "燃气报警器", "gas_pipeline": "燃气管网", "water_pressure": "供水压力",
           "water_flow": "供水流量", "water_quality": "水质", "drain_level": "排水液位",
           "manhole_cover": "井盖", "heat_pipe": "供热管网", "pump_station": "泵站"}
MAP_URL = "https://uri.amap.com/marker?position={lon},{lat}"

# builds an acknowledge link for ("alert"|"case", id); "" without links
LinkMaker = Callable[[str, int], str]


def _local(iso: str | None, tz: zoneinfo.ZoneInfo) -> str:
    if not iso:
        return ""
    try:
        at = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return at.astimezone(tz).strftime("%m-%d %H:%M")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


class Renderer:
    """Renders outbox payloads into :class:`Message` objects."""

    def __init__(self, registry: DeviceLookup | None = None, *, timezone: str = "Asia/Shanghai",
                 template_dir: Path | None = None, case_url: str = "",
                 ack_link: LinkMaker | None = None) -> None:
        self.registry = registry
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.case_url = case_url
        self.ack_link = ack_link
        dirs = [str(template_dir)] if template_dir else []
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([*dirs, str(BUILTIN_DIR)]),
            autoescape=jinja2.select_autoescape(["html", "html.j2"], default=False),
            undefined=jinja2.ChainableUndefined, trim_blocks=False, keep_trailing_newline=False)

    def item(self, event: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The template context of one event."""
        alert: Mapping[str, Any] = payload.get("alert") or {}
        case: Mapping[str, Any] = payload.get("case") or {}
        notify: Mapping[str, Any] = payload.get("notify") or {}
        device_id = str(alert.get("device") or case.get("device") or "")
        device = self.registry.get(device_id) if self.registry and device_id else None
        dtype = str(alert.get("device_type") or case.get("device_type") or "")
        severity = str(alert.get("severity") or case.get("severity") or "info")
        grid = alert.get("grid") or case.get("grid") or ""
        district = alert.get("district") or case.get("district") or ""
        where = " ".join(str(p) for p in (district, f"网格 {grid}" if grid else "",
                                          device.address if device else "") if p)
        metric = str(alert.get("metric") or "")
        value = alert.get("value")
        limit_text = ""
        if device is not None and metric in device.limits:
            limits = device.limits[metric]
            shown = [f"{k} {_fmt(v)}" for k, v in limits.items()]
            limit_text = "，".join(shown)
        lat = device.lat if device else None
        lon = device.lon if device else None
        case_id = case.get("id")
        deadlines: Mapping[str, Any] = case.get("deadlines") or {}
        deadline = next((deadlines[k] for k in ("handle", "dispatch", "register")
                         if deadlines.get(k)), None)
        ack_url = ""
        if self.ack_link is not None and event not in ("alert.resolved", "case.closed"):
            if case_id is not None:
                ack_url = self.ack_link("case", int(case_id))
            elif alert.get("id") is not None:
                ack_url = self.ack_link("alert", int(alert["id"]))
        closing = event in ("alert.resolved", "case.closed")
        what = f"{alert.get('rule')}" if alert else f"案件 #{case_id}"
        headline = f"{EVENT_ZH.get(event, event)}：{TYPE_ZH.get(dtype, dtype or '设备')} {what}"
        return {
            "event": event, "event_zh": EVENT_ZH.get(event, event),
            "severity": "resolved" if closing else severity,
            "severity_zh": SEVERITY_ZH.get(severity, severity), "headline": headline,
            "device": device_id, "device_name": (device.name if device and device.name
                                                 else device_id),
            "device_type": dtype, "device_type_zh": TYPE_ZH.get(dtype, dtype),
            "grid": grid, "district": district, "address": device.address if device else "",
            "where": where or "未登记位置", "lat": lat, "lon": lon,
            "map_url": MAP_URL.format(lon=lon, lat=lat) if lat is not None and lon is not None
            else "",
            "metric": metric, "value": value,
            "value_text": f"{metric} = {_fmt(float(value))}" if value is not None else "",
            "limit_text": limit_text,
            "since": _local(alert.get("fired") or alert.get("first_seen") or case.get("created"),
                            self.tz),
            "resolved_at": _local(alert.get("resolved") or (case.get("closed") or
                                   case.get("cancelled") if closing else None), self.tz),
            "case_id": case_id, "case_state": case.get("state"),
            "case_state_zh": STATE_ZH.get(str(case.get("state")), case.get("state") or ""),
            "deadline": "" if closing else _local(deadline, self.tz),
            "case_url": self.case_url.replace("{id}", str(case_id))
            if self.case_url and case_id is not None else "",
            "ack_url": ack_url, "unit": case.get("unit") or alert.get("unit") or "",
            "escalation": bool(notify.get("escalation")), "after": notify.get("after", ""),
            "action": payload.get("action"),
        }

    def render(self, events: Sequence[tuple[str, Mapping[str, Any]]]) -> Message:
        """One message for one or more (event, payload) pairs (several: a digest)."""
        items = [self.item(e, p) for e, p in events]
        ctx = {"items": items}
        try:
            title = self.env.get_template("title.txt.j2").render(ctx).strip()
            ctx["title"] = title  # type: ignore[assignment]
            markdown = self.env.get_template("message.md.j2").render(ctx).strip()
            text = self.env.get_template("message.txt.j2").render(ctx).strip()
            html = self.env.get_template("message.html.j2").render(ctx)
            sms = self.env.get_template("message.sms.j2").render(ctx).strip()
        except jinja2.TemplateError as exc:
            raise ChannelError(f"template: {exc}", retryable=False) from exc
        rank = ("resolved", "info", "warning", "minor", "major", "critical")
        worst = max((i["severity"] for i in items), key=lambda s: rank.index(s)
                    if s in rank else 0)
        first = items[0]
        return Message(title=title, markdown=markdown, text=text, html=html, sms=sms,
                       items=items, severity=worst,
                       ack_url=first["ack_url"] if len(items) == 1 else "",
                       case_url=first["case_url"] if len(items) == 1 else "")
