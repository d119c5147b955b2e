"""Push dashboards (and, when asked, their folder and datasource) to a Grafana server.

Uses grafana-client. Idempotent: a dashboard is uploaded by uid with ``overwrite``;
one whose content on the server already equals ours is left alone and reported
``unchanged``, so pushing twice changes nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import niquests
from grafana_client.api import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaUnauthorizedError,
)

from dashboards.errors import PushError

log = logging.getLogger(__name__)

MIN_GRAFANA = (10, 0)
Change = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class Pushed:
    """One object and what the push did to it."""

    kind: Literal["folder", "datasource", "dashboard"]
    uid: str
    title: str
    change: Change


@dataclass(frozen=True, slots=True)
class PushResult:
    """What was pushed, and the server's version."""

    grafana_version: str
    items: tuple[Pushed, ...]

    def changed(self) -> list[Pushed]:
        """Items created or updated."""
        return [i for i in self.items if i.change != "unchanged"]


def folder_uid(name: str) -> str:
    """A stable folder uid from its name (Grafana: at most 40 of [A-Za-z0-9_-])."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()
    return (slug or "folder")[:40]


def _version(text: str) -> tuple[int, int]:
    m = re.match(r"v?(\d+)\.(\d+)", text or "")
    if not m:
        raise PushError(f"cannot read the Grafana version {text!r}")
    return int(m.group(1)), int(m.group(2))


def _short(message: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters (a server may answer a whole HTML page)."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _subset_equal(ours: Any, theirs: Any) -> bool:
    """Every key we set has the same value on the server (server-side additions ignored)."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(
            _subset_equal(v, theirs.get(k)) for k, v in ours.items())
    if isinstance(ours, list):
        return (isinstance(theirs, list) and len(ours) == len(theirs)
                and all(_subset_equal(a, b) for a, b in zip(ours, theirs, strict=True)))
    return bool(ours == theirs)


class Pusher:
    """One Grafana server and a token (service account token or API key)."""

    def __init__(self, url: str, token: str, *, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise PushError(f"Grafana URL must start with http:// or https://: {url!r}")
        if not token:
            raise PushError("a Grafana token is needed (service account token)")
        self.url = url.rstrip("/")
        self.api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout)

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False) -> Any:
        """``fn(*args)`` with every failure as one :class:`PushError` line (``missing_ok``:
        a 404 answers None)."""
        try:
            return fn(*args)
        except GrafanaUnauthorizedError as exc:
            raise PushError(f"Grafana at {self.url} refused the token (401) while {what}: "
                            "check --token (a service account token with Editor or Admin "
                            "role)") from exc
        except GrafanaClientError as exc:
            if exc.status_code == 404 and missing_ok:
                return None
            if exc.status_code == 403:
                raise PushError(f"Grafana at {self.url}: the token may not do this ({what}): "
                                f"403 {_short(exc.message)}") from exc
            raise PushError(f"Grafana at {self.url}: {what}: "
                            f"{_short(exc.message)}") from exc
        except GrafanaException as exc:
            raise PushError(f"Grafana at {self.url} failed while {what}: "
                            f"{_short(exc.message)}") from exc
        except niquests.exceptions.RequestException as exc:
            raise PushError(f"Grafana at {self.url} unreachable while {what}: {exc}") from exc
        except ValueError as exc:  # a body that claims JSON and is not (not Grafana's API)
            raise PushError(f"{self.url} does not answer like Grafana while {what} "
                            f"(the answer is not JSON): check --url") from exc

    def _get(self, what: str, fn: Any, *args: Any) -> Any | None:
        """A GET that may answer 404 (None)."""
        return self._call(what, fn, *args, missing_ok=True)

    def version(self) -> str:
        """The server's version; refuses servers older than Grafana 10."""
        path = "/api/frontend/settings"
        try:
            settings = self._call("reading its version", self.api.client.GET,
                                  path.removeprefix("/api"))
        except PushError as exc:
            if isinstance(exc.__cause__, GrafanaClientError) and exc.__cause__.status_code == 404:
                raise PushError(f"{self.url} is not Grafana: GET {path} answered 404 "
                                "(check --url: Grafana's root URL)") from exc
            raise
        info = settings.get("buildInfo") if isinstance(settings, dict) else None
        if not isinstance(info, dict) or not info.get("version"):
            raise PushError(f"{self.url} is not Grafana: GET {path} has no build info "
                            "(check --url: Grafana's root URL)")
        text = str(info["version"])
        if _version(text) < MIN_GRAFANA:
            raise PushError(f"Grafana at {self.url} is version {text}; the dashboards need "
                            f"Grafana {MIN_GRAFANA[0]}.{MIN_GRAFANA[1]} or newer")
        return text

    def ensure_folder(self, name: str) -> Pushed:
        """The folder, created when missing."""
        uid = folder_uid(name)
        found = self._get(f"looking up folder {name!r}", self.api.folder.get_folder, uid)
        if found is not None:
            return Pushed("folder", uid, name, "unchanged")
        self._call(f"creating folder {name!r}", self.api.folder.create_folder, name, uid)
        log.info("created Grafana folder %s (uid %s)", name, uid)
        return Pushed("folder", uid, name, "created")

    def ensure_datasource(self, payload: dict[str, Any]) -> Pushed:
        """The InfluxDB datasource by uid: created, updated when it differs, else left."""
        uid = str(payload["uid"])
        found = self._get(f"looking up datasource {uid}",
                          self.api.datasource.get_datasource_by_uid, uid)
        plain = {k: v for k, v in payload.items() if k != "secureJsonData"}
        if found is None:
            self._call("creating the datasource", self.api.datasource.create_datasource,
                       payload)
            return Pushed("datasource", uid, str(payload["name"]), "created")
        if _subset_equal(plain, found) and not payload.get("secureJsonData"):
            return Pushed("datasource", uid, str(payload["name"]), "unchanged")
        self._call("updating the datasource", self.api.datasource.update_datasource_by_uid,
                   uid, payload)
        return Pushed("datasource", uid, str(payload["name"]), "updated")

    def push_dashboard(self, dashboard: dict[str, Any], folder: str | None) -> Pushed:
        """Upload one dashboard by uid (overwrite) unless the server has the same content."""
        uid = str(dashboard["uid"])
        title = str(dashboard.get("title", uid))
        found = self._get(f"reading dashboard {uid}", self.api.dashboard.get_dashboard, uid)
        change: Change = "created"
        if isinstance(found, dict):
            meta = found.get("meta") or {}
            same_folder = folder is None or meta.get("folderUid") == folder
            if same_folder and _subset_equal(dashboard, found.get("dashboard")):
                return Pushed("dashboard", uid, title, "unchanged")
            change = "updated"
        body: dict[str, Any] = {"dashboard": {**dashboard, "id": None}, "overwrite": True,
                                "message": "lifeline dashboards push"}
        if folder is not None:
            body["folderUid"] = folder
        self._call(f"uploading dashboard {uid}", self.api.dashboard.update_dashboard, body)
        log.info("dashboard %s %s", uid, change)
        return Pushed("dashboard", uid, title, change)


def push(url: str, token: str, dashboards: Sequence[dict[str, Any]], *,
         folder: str | None = None, datasource: dict[str, Any] | None = None,
         timeout: float = 10.0) -> PushResult:
    """Check the server, then folder (if named), datasource (if given), every dashboard."""
    p = Pusher(url, token, timeout=timeout)
    version = p.version()
    items: list[Pushed] = []
    folder_id: str | None = None
    if folder:
        f = p.ensure_folder(folder)
        items.append(f)
        folder_id = f.uid
    if datasource is not None:
        items.append(p.ensure_datasource(datasource))
    for d in dashboards:
        items.append(p.push_dashboard(d, folder_id))
    return PushResult(version, tuple(items))
