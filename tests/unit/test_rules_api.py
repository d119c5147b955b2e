"""``/api/v1/rules``: roles, 503 without an engine, reload errors keep the running rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from devices.model import Device
from devices.series import SeriesTable
from lifeline.app import create_app
from lifeline.auth import new_token, token_digest
from lifeline.db import open_database
from lifeline.settings import load_settings
from rules.engine import RuleEngine
from rules.loader import load_rules

RULE = '[[rule]]\nid = "lvl1"\nmetric = "lel"\nabove = 25.0\nclear = 20.0\nfor = "10s"\n'


class Cols:
    def __init__(self, ts: int, value: float) -> None:
        self.series = np.array([0], dtype=np.int64)
        self.ts_ns = np.array([ts], dtype=np.int64)
        self.value = np.array([value])


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestClient, RuleEngine, Path, dict[str, str]]:
    tokens = {role: new_token() for role in ("viewer", "operator", "admin")}
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": f"{r}-user", "role": r, "sha256": token_digest(t)} for r, t in tokens.items()]})
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "a.toml").write_text(RULE)
    table = SeriesTable()
    table.id_for(Device("g1", "gas_alarm"), "lel")
    engine = RuleEngine(load_rules([rules_dir]), table)
    app = create_app(settings, open_database(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                     rule_engine=engine,
                     rules_reload=lambda: engine.reload(load_rules([rules_dir])))
    headers = {r: f"Bearer {t}" for r, t in tokens.items()}
    return TestClient(app), engine, rules_dir, headers


def test_list_and_reload_keep_state(setup: tuple[TestClient, RuleEngine, Path, dict[str, str]]
                                    ) -> None:
    client, engine, rules_dir, headers = setup
    engine.evaluate(Cols(0, 30.0))
    body = client.get("/api/v1/rules", headers={"Authorization": headers["viewer"]}).json()
    assert body["count"] == 1 and body["evaluated_readings"] == 1
    rule = body["data"][0]
    assert (rule["id"], rule["kind"], rule["series"], rule["firing"]) == ("lvl1", "threshold",
                                                                         1, 0)
    assert rule["definition"]["above"] == 25.0
    (rules_dir / "b.toml").write_text('[[rule]]\nid = "s"\nkind = "stale"\nafter = "1h"\n')
    resp = client.post("/api/v1/rules/reload", headers={"Authorization": headers["admin"]})
    assert resp.status_code == 200 and resp.json() == {"kept": 1, "new": 1, "count": 2}
    engine.evaluate(Cols(10 * 10**9, 31.0))  # `for` elapsed across the reload
    body = client.get("/api/v1/rules", headers={"Authorization": headers["viewer"]}).json()
    assert [(r["id"], r["firing"]) for r in body["data"]] == [("lvl1", 1), ("s", 0)]


def test_reload_roles_and_invalid_files(
        setup: tuple[TestClient, RuleEngine, Path, dict[str, str]]) -> None:
    client, engine, rules_dir, headers = setup
    assert client.post("/api/v1/rules/reload").status_code == 401
    viewer = client.post("/api/v1/rules/reload", headers={"Authorization": headers["viewer"]})
    assert viewer.status_code == 403
    (rules_dir / "c.toml").write_text('[[rule]]\nid = "x"\nkind = "mnf"\nmetric = "flow"\n'
                                      'window = "25:00-26:00"\n')
    resp = client.post("/api/v1/rules/reload", headers={"Authorization": headers["admin"]})
    assert resp.status_code == 422
    assert "c.toml: rule 'x': field 'window'" in resp.json()["detail"]
    assert [r.id for r in engine.rules] == ["lvl1"]


def test_no_engine_is_503(tmp_path: Path) -> None:
    token = new_token()
    settings = load_settings(None, run_dir=tmp_path, api={"tokens": [
        {"name": "v", "role": "admin", "sha256": token_digest(token)}]})
    client = TestClient(create_app(settings, open_database(f"sqlite:///{tmp_path / 'd.db'}")))
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/rules", headers=auth).status_code == 503
    assert client.post("/api/v1/rules/reload", headers=auth).status_code == 503
