"""Dashboards as code: rendered JSON is stable, loads back into the SDK, uids are unique."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.check import targets_of
from dashboards.definitions import all_boards
from dashboards.errors import DashboardsError
from dashboards.influxql import InfluxQLQuery
from dashboards.model import GrafanaTarget
from dashboards.render import InfluxSource, load, provisioning_files, render, setup_sdk, to_json
from lifeline.cli import main

UIDS = {"lifeline-overview", "lifeline-gas", "lifeline-water", "lifeline-drainage",
        "lifeline-devices", "lifeline-service"}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_render_twice_is_identical(tmp_path: Path) -> None:
    a = render(tmp_path / "a", GrafanaTarget(), InfluxSource())
    b = render(tmp_path / "b", GrafanaTarget(), InfluxSource())
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert len(a.dashboards) == len(b.dashboards) == 6 and len(a.provisioning) == 2
    for rel in _tree(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel


def test_rendered_json_loads_back_into_the_sdk_models(tmp_path: Path) -> None:
    out = render(tmp_path, GrafanaTarget(), InfluxSource())
    uids: list[str] = []
    for path in out.dashboards:
        data = json.loads(path.read_text("utf-8"))
        model = load(data)
        assert isinstance(model, dm.Dashboard)
        assert model.uid == data["uid"] == path.stem
        uids.append(str(model.uid))
        panels = model.panels or []
        assert panels, path.name
        ids = [p.id_val for p in panels]
        assert len(ids) == len(set(ids))
        for p in panels:
            assert isinstance(p, dm.Panel)
            targets = p.targets or []
            assert targets, f"{path.name}: panel {p.title} has no query"
            for t in targets:
                assert isinstance(t, InfluxQLQuery)
                assert t.datasource is not None and t.datasource.uid == "lifeline-influxdb"
                assert t.raw_query and t.query.startswith(("SELECT", "SHOW"))
        # the JSON written is what the model writes back (nothing lost on a round trip)
        assert json.loads(json.dumps(model.to_json(), default=lambda o: o.to_json())
                          )["uid"] == data["uid"]
    assert len(uids) == len(set(uids)) and set(uids) == UIDS


def test_every_target_is_declared_with_its_columns() -> None:
    setup_sdk()
    for board in all_boards():
        data = to_json(board)
        declared = {(q.panel, q.ref_id, q.query) for q in board.queries}
        found = {(t.panel, t.ref_id, t.query) for t in targets_of(data)}
        assert found == declared, board.uid
        assert all(q.columns for q in board.queries)
        names = [v["name"] for v in data["templating"]["list"]]
        assert len(names) == len(set(names))


def test_settings_reach_every_target() -> None:
    setup_sdk()
    target = GrafanaTarget(datasource_uid="ds-city-1", timezone="Europe/Berlin")
    for board in all_boards(target):
        data = to_json(board)
        assert data["timezone"] == "Europe/Berlin"
        text = json.dumps(data)
        assert '"uid": "ds-city-1"' in text and "lifeline-influxdb" not in text
    water = to_json(next(b for b in all_boards(target) if b.uid == "lifeline-water"))
    assert "tz('Europe/Berlin')" in json.dumps(water)


def test_provisioning_files() -> None:
    files = provisioning_files(GrafanaTarget(folder="Ops"),
                               InfluxSource("http://influx:8086", "city", username="grafana",
                                            password="s3cret"), "/dash")
    ds = files["provisioning/datasources/lifeline.yaml"]
    assert 'url: "http://influx:8086"' in ds and 'dbName: "city"' in ds
    assert 'uid: "lifeline-influxdb"' in ds and 'type: "influxdb"' in ds
    assert "s3cret" not in ds and "$LIFELINE_INFLUX_PASSWORD" in ds
    prov = files["provisioning/dashboards/lifeline.yaml"]
    assert 'folder: "Ops"' in prov and 'path: "/dash"' in prov and "apiVersion: 1" in prov
    v2 = provisioning_files(GrafanaTarget(), InfluxSource("https://cloud", "bucket", version=2,
                                                          token="tok-123"), "/d")
    text = v2["provisioning/datasources/lifeline.yaml"]
    assert "tok-123" not in text and "Token $LIFELINE_INFLUX_TOKEN" in text
    assert 'httpHeaderName1: "Authorization"' in text


def test_hostile_names_are_quoted_in_yaml() -> None:
    files = provisioning_files(GrafanaTarget(folder='a: b\n- "c"'),
                               InfluxSource("http://x", "d"), "/p")
    prov = files["provisioning/dashboards/lifeline.yaml"]
    assert 'folder: "a: b\\n- \\"c\\""' in prov


@pytest.mark.parametrize("bad", [{"panels": "not a list"}, {"panels": [{"type": "timeseries",
                                                                         "targets": 5}]}])
def test_load_refuses_malformed_json(bad: dict[str, object]) -> None:
    with pytest.raises(DashboardsError, match="does not load"):
        load(bad)


def test_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["dashboards", "render", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 8 and all(Path(p).is_file() for p in printed)
    (tmp_path / "blocked").write_text("a file, not a directory")
    assert main(["dashboards", "render", "--out", str(tmp_path / "blocked")]) == 1
    assert "cannot write" in capsys.readouterr().err
