"""Dashboards as Grafana JSON and provisioning files (datasource, dashboard provider)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as dm

from dashboards import influxql
from dashboards.definitions import Board, all_boards
from dashboards.errors import DashboardsError
from dashboards.model import GrafanaTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InfluxSource:
    """The InfluxDB the Grafana datasource points at (InfluxQL)."""

    url: str = "http://127.0.0.1:8086"
    database: str = "lifeline"
    version: int = 1  # 2: InfluxDB 2.x/3.x, InfluxQL through a DBRP mapping and a token
    username: str = ""
    password: str = ""
    token: str = ""


def setup_sdk() -> None:
    """Register the SDK's panel/dataquery variants and our InfluxQL dataquery."""
    register_default_plugins()
    influxql.register()


def to_json(board: Board) -> dict[str, Any]:
    """The dashboard as a JSON object (stable: same input, same output)."""
    data: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i  # stable panel ids (Grafana needs them unique per dashboard)
        if panel.get("options") is None:
            panel["options"] = {}  # Grafana's defaults (the SDK writes null when none set)
    return data


def dumps(data: dict[str, Any]) -> str:
    """Canonical JSON text of a dashboard (sorted keys, UTF-8)."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load(data: dict[str, Any]) -> dm.Dashboard:
    """Load dashboard JSON back into the SDK's model (refuses what it cannot read)."""
    setup_sdk()
    try:
        return dm.Dashboard.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DashboardsError(f"dashboard JSON does not load: {exc}") from exc


def datasource_payload(target: GrafanaTarget, source: InfluxSource) -> dict[str, Any]:
    """The InfluxQL datasource as Grafana's API and provisioning describe it."""
    ds: dict[str, Any] = {
        "name": target.datasource_name, "uid": target.datasource_uid, "type": "influxdb",
        "access": "proxy", "url": source.url, "isDefault": False,
        "jsonData": {"httpMode": "GET", "dbName": source.database},
        "secureJsonData": {},
    }
    if source.version == 2:  # InfluxQL on 2.x/3.x: DBRP mapping, token in a header
        ds["jsonData"].update(httpHeaderName1="Authorization")
        ds["secureJsonData"]["httpHeaderValue1"] = f"Token {source.token}"
    else:
        if source.username:
            ds["user"] = source.username
        if source.password:
            ds["secureJsonData"]["password"] = source.password
    ds["database"] = source.database
    return ds


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a YAML string


def _yaml(value: Any, indent: int = 0) -> list[str]:
    """Minimal YAML emitter for provisioning files (mappings, lists, scalars)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:")
                lines += _yaml(v, indent + 2)
            elif isinstance(v, dict):
                lines.append(f"{pad}{k}: {{}}")
            elif isinstance(v, list):
                lines.append(f"{pad}{k}: []")
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(value, list):
        for item in value:
            sub = _yaml(item, indent + 2)
            lines.append(f"{pad}- {sub[0].lstrip()}")
            lines += sub[1:]
    else:
        lines.append(f"{pad}{_yaml_scalar(value)}")
    return lines


def provisioning_files(target: GrafanaTarget, source: InfluxSource,
                       dashboards_path: str) -> dict[str, str]:
    """``datasources/lifeline.yaml`` and ``dashboards/lifeline.yaml`` for Grafana 10+."""
    ds = datasource_payload(target, source)
    ds.pop("secureJsonData")
    secure: dict[str, str] = {}
    if source.version == 2:
        secure["httpHeaderValue1"] = "Token $LIFELINE_INFLUX_TOKEN"
    elif source.password:
        secure["password"] = "$LIFELINE_INFLUX_PASSWORD"  # noqa: S105 - a placeholder
    entry: dict[str, Any] = {**ds, "editable": False}
    if secure:
        entry["secureJsonData"] = secure
    datasources = {"apiVersion": 1, "datasources": [entry]}
    providers = {"apiVersion": 1, "providers": [{
        "name": "citylifeline", "orgId": 1, "folder": target.folder, "type": "file",
        "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 60,
        "options": {"path": dashboards_path, "foldersFromFilesStructure": False},
    }]}
    head = "# Generated by `lifeline dashboards render`; do not edit.\n"
    return {
        "provisioning/datasources/lifeline.yaml": head + "\n".join(_yaml(datasources)) + "\n",
        "provisioning/dashboards/lifeline.yaml": head + "\n".join(_yaml(providers)) + "\n",
    }


@dataclass(frozen=True, slots=True)
class Rendered:
    """What :func:`render` wrote."""

    dashboards: tuple[Path, ...]
    provisioning: tuple[Path, ...]


def render(out: Path, target: GrafanaTarget, source: InfluxSource,
           dashboards_path: str = "/var/lib/grafana/dashboards/citylifeline") -> Rendered:
    """Write every dashboard's JSON (``dashboards/<uid>.json``) and the provisioning YAML."""
    setup_sdk()
    boards_dir = out / "dashboards"
    try:
        boards_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for board in all_boards(target):
            path = boards_dir / f"{board.uid}.json"
            path.write_text(dumps(to_json(board)), encoding="utf-8")
            written.append(path)
        prov: list[Path] = []
        for rel, text in provisioning_files(target, source, dashboards_path).items():
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            prov.append(path)
    except OSError as exc:
        raise DashboardsError(f"cannot write to {out}: {exc}") from exc
    log.info("rendered %d dashboards into %s", len(written), out)
    return Rendered(tuple(written), tuple(prov))
