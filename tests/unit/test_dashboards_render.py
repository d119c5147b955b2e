"""Dashboards as code: rendered JSON is stable, loads back into the SDK, uids are unique."""

from __future__ import annotations

import filecmp
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.check import targets_of
from dashboards.definitions import all_boards
from dashboards.errors import DashboardsError
from dashboards.influxql import InfluxQLQuery
from dashboards.model import GrafanaTarget
from dashboards.render import InfluxSource, load, provisioning_files, render, setup_sdk, to_json
from devices.catalogue import Catalogue
from lifeline.cli import main
from lifeline.commands.dashboards import grafana_target
from lifeline.errors import ConfigError
from lifeline.settings import load_settings

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


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels") or [])


def _datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                yield f"{path}/{k}", v
            yield from _datasource_refs(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _datasource_refs(v, f"{path}[{i}]")


def test_every_panel_target_variable_and_annotation_names_the_datasource() -> None:
    """A provisioned dashboard works without edits: nothing falls back to Grafana's default
    datasource (a null panel datasource would)."""
    setup_sdk()
    ref = {"type": "influxdb", "uid": "ds-city-7"}
    for board in all_boards(GrafanaTarget(datasource_uid="ds-city-7")):
        data = to_json(board)
        panels = list(_walk_panels(data["panels"]))
        assert panels
        for p in panels:
            assert p.get("datasource") == ref, f"{board.uid}: panel {p['title']}"
            for t in p.get("targets") or []:
                assert t.get("datasource") == ref, f"{board.uid}: {p['title']} {t['refId']}"
        for v in data["templating"]["list"]:
            if v["type"] == "query":
                assert v.get("datasource") == ref, f"{board.uid}: variable {v['name']}"
            else:  # custom: its values are in the JSON, no datasource involved
                assert v["type"] == "custom" and v["options"] and "datasource" not in v
        annotations = data["annotations"]["list"]
        assert annotations
        for a in annotations:
            assert a.get("datasource") == ref, f"{board.uid}: annotation {a['name']}"
        refs = list(_datasource_refs(data))
        assert refs and all(r == ref for _, r in refs), [p for p, r in refs if r != ref]


def test_device_type_variable_comes_from_the_catalogue_with_the_operators_types(
        tmp_path: Path) -> None:
    extra = tmp_path / "types.toml"
    extra.write_text('[gas_alarm_nb]\n[gas_alarm_nb.metrics.lel]\nunit = "%LEL"\n'
                     'range = [0, 100]\n[pump]\n[pump.metrics.speed]\nunit = "rpm"\n'
                     'range = [0, 5000]\n', encoding="utf-8")
    settings = load_settings(None, run_dir=tmp_path, devices={"catalogue": extra})
    target = grafana_target(settings)
    builtin = list(Catalogue.builtin().types)
    assert list(target.device_types) == [*builtin, "gas_alarm_nb", "pump"]
    setup_sdk()
    boards = {b.uid: to_json(b) for b in all_boards(target)}
    for uid in ("lifeline-overview", "lifeline-devices"):
        var = next(v for v in boards[uid]["templating"]["list"] if v["name"] == "type")
        assert var["query"].split(",") == [*builtin, "gas_alarm_nb", "pump"]
        assert [o["value"] for o in var["options"]] == [*builtin, "gas_alarm_nb", "pump"]
    gas_device = next(v for v in boards["lifeline-gas"]["templating"]["list"]
                      if v["name"] == "device")
    assert '/^(gas_alarm|gas_pipeline|gas_alarm_nb)$/' in gas_device["query"]
    default = next(v for v in to_json(all_boards()[0])["templating"]["list"]
                   if v["name"] == "type")
    assert default["query"].split(",") == builtin


def _links_of(panel: dict[str, Any], field_name: str) -> list[dict[str, Any]]:
    for o in panel["fieldConfig"]["overrides"]:
        if o["matcher"] == {"id": "byName", "options": field_name}:
            for prop in o["properties"]:
                if prop["id"] == "links":
                    links: list[dict[str, Any]] = prop["value"]
                    return links
    return []


def test_case_and_alert_tables_link_to_the_case(tmp_path: Path) -> None:
    setup_sdk()
    dispatch = GrafanaTarget(api_url="https://lifeline.city.example",
                             case_url="https://dispatch.example/case?id={case_id}&src=lifeline")
    api = GrafanaTarget(api_url="https://lifeline.city.example")
    for target, url in ((dispatch, "https://dispatch.example/case?id=${__value.raw}&src=lifeline"),
                        (api, "https://lifeline.city.example/api/v1/cases/${__value.raw}")):
        overview = to_json(all_boards(target)[0])
        case_tables = [p for p in overview["panels"] if p["type"] == "table"
                       and any("lifeline_case" in t["query"] for t in p["targets"])]
        assert {p["title"] for p in case_tables} == {"Open cases (case id: link to the case)",
                                                     "Overdue cases (超期)"}
        for p in case_tables:
            assert [link["url"] for link in _links_of(p, "case_id")] == [url], p["title"]
        case_notes = next(a for a in overview["annotations"]["list"]
                          if a["name"] == "case changes")
        assert "case_id" in case_notes["tagsColumn"].split(",")
    alert_tables = 0
    for board in all_boards(api):
        for p in to_json(board)["panels"]:
            if p["type"] == "table" and any(  # tables of single alerts (not rule counts)
                    'FROM "lifeline_alert"' in t["query"] and 'GROUP BY "device", "rule"'
                    in t["query"] for t in p["targets"]):
                links = _links_of(p, "rule")
                assert [link["url"] for link in links] == [
                    "https://lifeline.city.example/api/v1/alerts?"
                    "device=${__data.fields.device:percentencode}"
                    "&rule=${__data.fields.rule:percentencode}"], (board.uid, p["title"])
                alert_tables += 1
    assert alert_tables >= 7  # active alerts and alert logs of every dashboard


@pytest.mark.parametrize("bad", ["https://dispatch.example/cases", "ftp://x/{case_id}"])
def test_case_url_must_be_http_with_the_case_id(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\{case_id\}"):
        load_settings(None, run_dir=tmp_path, grafana={"case_url": bad})


def test_data_link_urls_follow_the_api_settings(tmp_path: Path) -> None:
    wildcard = grafana_target(load_settings(None, run_dir=tmp_path,
                                            api={"host": "0.0.0.0", "port": 9000}))
    assert wildcard.api_url == "http://localhost:9000"
    assert wildcard.case_link() == "http://localhost:9000/api/v1/cases/{case_id}"
    set_url = grafana_target(load_settings(None, run_dir=tmp_path,
                                           grafana={"api_url": "https://ops.example/lifeline/"}))
    assert set_url.case_link() == "https://ops.example/lifeline/api/v1/cases/{case_id}"
