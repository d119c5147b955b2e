"""Alerts/cases/webhook settings: validated, unsafe values refused, mapped to the pipeline."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from alerts.cases.model import Route
from alerts.delivery.outbox import DeliveryConfig, OutboxWorker, backoff_s, give_up_after_s
from alerts.delivery.webhook import HttpNotifier
from lifeline.alerting import alert_config, case_config, delivery_config
from lifeline.errors import ConfigError
from lifeline.settings import load_settings
from rules.model import Severity

S = 1_000_000_000


@pytest.mark.parametrize(("overrides", "key"), [
    ({"alerts": {"flap_threshold": 0}}, "alerts.flap_threshold"),
    ({"alerts": {"reopen_window": "-5m"}}, "alerts.reopen_window"),
    ({"alerts": {"resolve_delay": "365d"}}, "alerts.resolve_delay"),
    ({"alerts": {"flap_window": "0s"}}, "alerts"),
    ({"alerts": {"tick_interval": 0}}, "alerts.tick_interval"),
    ({"cases": {"auto_register_severity": "extreme"}}, "cases.auto_register_severity"),
    ({"cases": {"group_window": "0s"}}, "cases.group_window"),
    ({"cases": {"kpi_interval": "soon"}}, "cases.kpi_interval"),
    ({"cases": {"deadlines": {"urgent": {"handle": "1h"}}}}, "cases.deadlines"),
    ({"cases": {"deadlines": {"critical": {"handle": "0s"}}}}, "cases.deadlines.critical.handle"),
    ({"cases": {"deadlines": {"critical": {"fix": "1h"}}}}, "cases.deadlines.critical.fix"),
    ({"cases": {"routing": [{"grid": "G1", "unit": ""}]}}, "cases.routing.0.unit"),
    ({"cases": {"default_unit": ""}}, "cases.default_unit"),
    ({"webhook": {"fallback_url": "http://b/x", "secret": "s" * 20}}, "webhook"),
    ({"webhook": {"url": "http://a/x", "fallback_url": "ftp://b", "secret": "s" * 20}},
     "webhook"),
    ({"webhook": {"url": "http://a/x", "secret": "s" * 20, "max_age": "0s"}}, "webhook.max_age"),
    ({"webhook": {"concurrency": 0}}, "webhook.concurrency"),
    ({"webhook": {"max_attempts": -1}}, "webhook.max_attempts"),
    ({"webhook": {"base_delay": 10, "max_delay": 1}}, "webhook"),
    ({"webhook": {"callback_window": "-1s"}}, "webhook.callback_window"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, overrides: dict[str, Any],
                                               key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, run_dir=tmp_path, **overrides)
    assert f"  {key}" in str(info.value)


def test_settings_map_to_pipeline_configs(tmp_path: Path) -> None:
    s = load_settings(None, run_dir=tmp_path,
                      alerts={"pending_for": "30s", "flap_threshold": 4},
                      cases={"auto_register_severity": "critical",
                             "routing": [{"grid": "G1", "device_type": "gas_alarm",
                                          "unit": "燃气抢修队"}],
                             "deadlines": {"critical": {"dispatch": "5m", "handle": "1h"},
                                           "gas_alarm/major": {"handle": "2h"}}},
                      webhook={"url": "http://a/x", "secret": "s" * 20, "max_age": "2h",
                               "concurrency": 2})
    a = alert_config(s)
    assert (a.pending_ns, a.flap_threshold, a.reopen_ns) == (30 * S, 4, 300 * S)
    c = case_config(s)
    assert c.auto_register is Severity.CRITICAL
    assert c.routes == (Route("G1", "gas_alarm", "燃气抢修队"),)
    assert c.deadlines_for(Severity.CRITICAL, "water").dispatch_ns == 300 * S
    assert c.deadlines_for(Severity.MAJOR, "gas_alarm").handle_ns == 7200 * S
    assert c.deadlines_for(Severity.MAJOR, "water").handle_ns == 0
    assert c.route("G1", "gas_alarm", "x") == "燃气抢修队"
    assert c.route("G2", "gas_alarm", "own unit") == "own unit"
    assert c.route("G2", "gas_alarm", "") == "城市运行管理中心"
    d = delivery_config(s)
    assert (d.max_age_ns, d.concurrency) == (7200 * S, 2)


def test_example_file_is_valid() -> None:
    s = load_settings(Path(__file__).parents[2] / "lifeline.example.toml")
    assert case_config(s).deadlines_for(Severity.CRITICAL, "gas_alarm").dispatch_ns == 300 * S


def test_webhooks_retry_until_max_age_by_default(tmp_path: Path) -> None:
    """By default a delivery is retried (every 2.5-5 minutes at most) until max_age; an
    explicit max_attempts still counts, and the span it covers is known."""
    d = delivery_config(load_settings(None, run_dir=tmp_path))
    assert (d.max_attempts, d.max_age_ns, d.max_delay_s) == (0, 24 * 3600 * S, 300.0)
    assert give_up_after_s(d) is None
    ten = delivery_config(load_settings(None, run_dir=tmp_path, webhook={"max_attempts": 10}))
    assert ten.max_attempts == 10
    assert give_up_after_s(ten) == (127.75, 255.5)  # 2-4 minutes of outage
    rng = random.Random(1)
    for attempt in (1, 10, 1_000, 100_000):  # a day of retries at a small max_delay
        assert 0.25 <= backoff_s(attempt, DeliveryConfig(), rng) <= 300.0
    assert 150.0 <= backoff_s(100_000, DeliveryConfig(), rng) <= 300.0


def test_a_max_attempts_that_gives_up_before_max_age_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    engine = sa.create_engine("sqlite://")
    notifier = HttpNotifier("http://127.0.0.1:9/hook", "s" * 20)
    with caplog.at_level(logging.WARNING, logger="alerts.delivery.outbox"):
        OutboxWorker(engine, notifier, config=DeliveryConfig())
        OutboxWorker(engine, notifier, config=DeliveryConfig(max_attempts=1000))
        OutboxWorker(engine, notifier, config=DeliveryConfig(max_attempts=10))
    notifier.close()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("webhook.max_attempts = 10 dead-letters a delivery after 128-256 s")
