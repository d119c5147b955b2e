"""Messages: Chinese by default with what a phone reader needs, follow-ups for resolved
alerts and closed cases, digests, the operator's templates first; the send limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alerts.notify.ratelimit import DEFAULT_LIMITS, RateLimiter
from alerts.notify.render import Renderer
from devices.model import Device
from devices.registry import MemoryRegistry

DEVICE = Device("gas-7", "gas_alarm", grid="G3", district="滨江区", name="阀井 7",
                lat=30.5, lon=120.25, address="滨江路 7 号", limits={"lel": {"high": 20.0}})


def firing(value: float = 62.5) -> dict[str, Any]:
    return {"alert": {"id": 5, "rule": "gas-lel", "severity": "major", "device": "gas-7",
                      "device_type": "gas_alarm", "grid": "G3", "metric": "lel",
                      "value": value, "fired": "2026-12-06T16:00:00Z", "resolved": None},
            "case": {"id": 9, "state": "dispatched", "severity": "major",
                     "created": "2026-12-06T16:00:00Z",
                     "deadlines": {"handle": "2026-12-06T18:00:00Z"}}}


def test_firing_message_has_what_where_how_bad_since_case_and_links() -> None:
    r = Renderer(MemoryRegistry([DEVICE]), case_url="https://d.example/c/{id}",
                 ack_link=lambda kind, oid: f"https://d.example/ack/{kind}/{oid}")
    m = r.render([("alert.firing", firing())])
    assert m.title == "【重要】告警：燃气报警器 gas-lel"
    for text in (m.markdown, m.text, m.html):
        for part in ("阀井 7", "网格 G3", "滨江路 7 号", "lel = 62.5", "high 20",
                     "https://uri.amap.com/marker?position=120.25,30.5",
                     "12-07 00:00",  # 16:00 UTC is the next day 00:00 in Asia/Shanghai
                     "#9", "12-07 02:00", "https://d.example/c/9", "https://d.example/ack/case/9"):
            assert part in text, (part, text)
    assert m.ack_url == "https://d.example/ack/case/9" and m.severity == "major"


def test_resolved_follow_up_has_no_ack_link_and_says_when() -> None:
    doc = firing(3.0)
    doc["alert"]["resolved"] = "2026-12-06T16:45:00Z"
    r = Renderer(MemoryRegistry([DEVICE]), ack_link=lambda kind, oid: "https://ack")
    m = r.render([("alert.resolved", doc)])
    assert m.title.startswith("【恢复】已恢复") and "恢复：12-07 00:45" in m.text
    assert "https://ack" not in m.markdown and m.severity == "resolved"


def test_a_digest_lists_every_event() -> None:
    m = Renderer().render([("alert.firing", firing(30.0)), ("alert.firing", firing(70.0))])
    assert m.title.startswith("【城市生命线】2 条通知")
    assert "lel = 30" in m.markdown and "lel = 70" in m.markdown and m.ack_url == ""


def test_operator_templates_come_first(tmp_path: Path) -> None:
    (tmp_path / "message.sms.j2").write_text("{{ items[0].device }} {{ items[0].value_text }}",
                                             encoding="utf-8")
    m = Renderer(template_dir=tmp_path).render([("alert.firing", firing())])
    assert m.sms == "gas-7 lel = 62.5"
    assert m.title == "【重要】告警：燃气报警器 gas-lel"  # the others stay built in


def test_rate_limiter_windows() -> None:
    lim = RateLimiter(DEFAULT_LIMITS["feishu"])  # 100/min and 5/s
    assert lim.available(1000.0) == 5
    for i in range(5):
        lim.take(1000.0 + i * 0.01)
    assert lim.available(1000.1) == 0 and 0.89 < lim.wait_s(1000.1) < 0.91
    assert lim.available(1001.05) == 5
    lim.block(1001.05, 60.0)
    assert lim.available(1001.1) == 0 and lim.wait_s(1001.1) > 59
