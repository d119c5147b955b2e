"""The whole case loop in one process over real HTTP: outbox → simulated dispatch system →
signed callbacks into the real API (uvicorn) → verification → closed; with returns and
late handling showing in the KPIs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from alerts.cases.book import CaseBook
from alerts.cases.kpi import compute
from alerts.cases.model import CaseConfig, CaseState, StageDeadlines
from alerts.cases.ops import CaseFilter, case_with_history, list_cases
from alerts.delivery.outbox import DeliveryConfig, OutboxWorker
from alerts.delivery.webhook import HttpNotifier
from alerts.lifecycle.model import AlertConfig
from alerts.lifecycle.pipeline import AlertPipeline
from devices.model import Device
from devices.registry import MemoryRegistry
from devtools.harness import free_port
from lifeline.app import ApiServer, create_app
from lifeline.db import open_database
from lifeline.settings import load_settings
from rules.model import Finding, FindingState, Severity
from simulators.dispatch import DispatchPlan, DispatchSimulator

pytestmark = pytest.mark.integration
SECRET = "dispatch-sim-secret-0123456789"


def test_simulated_dispatch_closes_every_case_with_returns_and_late_handling(
        db_url: str, tmp_path: Path) -> None:
    settings = load_settings(None, run_dir=tmp_path,
                             webhook={"url": "http://127.0.0.1:9/x", "secret": SECRET})
    engine = open_database(db_url)
    devices = [Device(f"gas-{i}", "gas_alarm", grid=f"G{i}", unit="燃气公司") for i in range(8)]
    cfg = CaseConfig(verify_after_ns=300_000_000,
                     deadlines={"critical": StageDeadlines(handle_ns=1_500_000_000)})
    pipeline = AlertPipeline(engine, MemoryRegistry(devices), AlertConfig(resolve_delay_ns=0),
                             cfg)
    app = create_app(settings, engine, case_book=CaseBook(cfg, lambda line: None))
    port = free_port()
    server = ApiServer(app, "127.0.0.1", port)
    server.start()
    sim = DispatchSimulator(SECRET, f"http://127.0.0.1:{port}",
                            DispatchPlan(accept_after_s=0.2, handle_after_s=0.5,
                                         return_rate=0.4, late_rate=0.4, late_extra_s=1.5,
                                         seed=5)).start()
    worker = OutboxWorker(engine, HttpNotifier(sim.url, SECRET, timeout=2),
                          config=DeliveryConfig(base_delay_s=0.05, poll_interval_s=0.05))
    worker.start()
    try:
        now = time.time_ns()
        pipeline.process([Finding("lel", d.id, "lel", FindingState.FIRING, Severity.CRITICAL,
                                  now, 60.0) for d in devices])
        pipeline.process([Finding("lel", d.id, "lel", FindingState.RESOLVED, Severity.CRITICAL,
                                  now + 1, 5.0) for d in devices])
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            pipeline.tick()
            worker.wake()
            closed = list_cases(engine, CaseFilter(state=CaseState.CLOSED), time.time_ns())[1]
            if closed == len(devices):
                break
            time.sleep(0.1)
        cases, total = list_cases(engine, CaseFilter(), time.time_ns())
        assert total == len(devices)
        assert {c.state for c in cases} == {CaseState.CLOSED}, [c.state for c in cases]
    finally:
        worker.stop(timeout=2)
        sim.stop()
        server.stop()
    assert sim.stats.bad_signatures == 0 and sim.stats.callbacks_failed == 0
    assert sim.stats.returned >= 1 and sim.stats.late >= 1
    returned = [c for c in cases if c.return_count]
    assert len(returned) == sim.stats.returned
    for c in returned:
        _, history, _ = case_with_history(engine, c.id)
        actions = [h.action for h in history]
        assert actions[:4] == ["report", "register", "dispatch", "accept"]
        assert actions[4:7] == ["return", "dispatch", "accept"], actions
    late = [c for c in cases if c.handled_on_time is False]
    assert late  # the late share missed the 1.5 s handle deadline
    (kpi,) = compute(engine, 0, time.time_ns() + 1)
    assert kpi.close_rate == 1.0 and kpi.disposal_rate == 1.0
    assert kpi.on_time_rate == pytest.approx((len(devices) - len(late)) / len(devices))
    assert kpi.mean_dispatch_s is not None and kpi.mean_dispatch_s >= 0.2


@pytest.mark.parametrize("kwargs", [{"accept_after_s": -1}, {"return_rate": 1.5},
                                    {"late_rate": -0.1}, {"late_extra_s": -2}])
def test_dispatch_plan_refuses_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"negative|fractions"):
        DispatchPlan(**kwargs)  # type: ignore[arg-type]


def test_simulated_dispatch_checks_what_it_receives() -> None:
    import httpx

    from alerts.delivery.signing import sign

    sim = DispatchSimulator(SECRET, f"http://127.0.0.1:{free_port()}").start()
    try:
        def post(body: bytes, delivery: str, secret: str = SECRET) -> int:
            ts = str(int(time.time()))
            return httpx.post(sim.url, content=body, headers={
                "X-Lifeline-Delivery": delivery, "X-Lifeline-Timestamp": ts,
                "X-Lifeline-Signature": sign(secret, ts, body)}).status_code

        good = b'{"event": "alert.firing", "event_id": "e", "case": null, "alert": {}}'
        assert post(good, "d1") == 200
        assert post(good, "d1") == 200  # a retry: de-duplicated
        assert post(good, "d2", secret="wrong-secret-wrong-secret") == 401
        assert post(b"{not json", "d3") == 400
        assert post(b'{"event": "case.dispatched", "case": {"id": "x"}}', "d4") == 400
        assert post(b'["event"]', "d5") == 400
        assert [e.delivery_id for e in sim.events()] == ["d1"]
        assert (sim.stats.duplicates, sim.stats.bad_signatures, sim.stats.malformed) == (1, 1, 3)
        assert sim.pending() == 0  # nothing was scheduled from bad input
    finally:
        sim.stop()
