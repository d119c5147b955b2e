"""``/api/v1/devices``: the device registry, status and latest readings."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from devices.catalogue import Catalogue
from devices.errors import DevicesError
from devices.inventory import device_row, parse_csv, parse_device, parse_json
from devices.model import Device, valid_device_id
from devices.status import DeviceState, LinkStatus
from devices.store import (
    DeviceExistsError,
    DeviceFilter,
    DeviceNotFoundError,
    DeviceStore,
)
from lifeline.api.deps import Admin, ApiContext, Ctx, EngineDep, Viewer
from lifeline.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

MAX_IMPORT_ROWS = 100_000
UNPROCESSABLE = 422  # starlette renamed the constant; the code is what matters


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceFields(_Schema):
    """Fields a client may set (validated like an inventory row)."""

    name: str = ""
    grid: str = ""
    district: str = ""
    unit: str = ""
    lat: float | None = None
    lon: float | None = None
    address: str = ""
    dma: str = ""
    install_date: date | None = None
    interval: float | str | None = Field(default=None, description="seconds or '15m'")
    enabled: bool = True
    tags: list[str] = Field(default_factory=list)
    limits: dict[str, dict[str, float]] = Field(default_factory=dict)


class DeviceCreate(DeviceFields):
    """A new device."""

    id: str = Field(min_length=1, max_length=64)
    type: str = Field(min_length=1, max_length=64)


class DeviceUpdate(_Schema):
    """Changes to a device; fields left out stay as they are."""

    type: str | None = None
    name: str | None = None
    grid: str | None = None
    district: str | None = None
    unit: str | None = None
    lat: float | None = None
    lon: float | None = None
    address: str | None = None
    dma: str | None = None
    install_date: date | None = None
    interval: float | str | None = None
    enabled: bool | None = None
    tags: list[str] | None = None
    limits: dict[str, dict[str, float]] | None = None


class DeviceStatusPublic(BaseModel):
    """Link status and health of a device."""

    link: LinkStatus
    since: datetime | None
    last_seen: datetime | None
    reason: str
    battery_low: bool
    weak_signal: bool
    battery: float | None
    rssi: float | None
    firmware: str | None


class DevicePublic(BaseModel):
    """A device as the API shows it."""

    id: str
    type: str
    name: str
    grid: str
    district: str
    unit: str
    lat: float | None
    lon: float | None
    address: str
    dma: str
    install_date: date | None
    interval: float | None
    enabled: bool
    tags: list[str]
    limits: dict[str, dict[str, float]]
    status: DeviceStatusPublic


class DevicesPublic(BaseModel):
    """A page of devices and the total count matching the filters."""

    data: list[DevicePublic]
    count: int


class ImportProblem(BaseModel):
    """One bad row of an import."""

    where: str
    id: str
    reasons: list[str]


class DeviceImportPublic(BaseModel):
    """Result of a bulk import."""

    imported: bool
    created: int
    updated: int
    unchanged: int
    rows: int
    problems: list[ImportProblem]


class StatusChangePublic(BaseModel):
    """One recorded status change."""

    at: datetime
    change: str
    reason: str


class DeviceEventPublic(BaseModel):
    """One stored device-side event."""

    at: datetime
    type: str
    level: int | None
    metric: str | None
    value: float | None
    severity: str


class DeviceLatestPublic(BaseModel):
    """A device's status, latest reading per metric, recent changes and events."""

    id: str
    status: DeviceStatusPublic
    readings: dict[str, dict[str, Any]]
    readings_error: str | None = None
    changes: list[StatusChangePublic]
    events: list[DeviceEventPublic]


def _ts(ns: int | None) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns else None


def _status(state: DeviceState) -> DeviceStatusPublic:
    return DeviceStatusPublic(
        link=state.link, since=_ts(state.since_ns), last_seen=_ts(state.last_seen_ns),
        reason=state.reason, battery_low=state.battery_low, weak_signal=state.weak_signal,
        battery=state.battery, rssi=state.rssi, firmware=state.firmware)


def _public(device: Device, state: DeviceState | None) -> DevicePublic:
    row = device_row(device)
    row["status"] = _status(state or DeviceState(device.id))
    return DevicePublic.model_validate(row)


def _catalogue(ctx: ApiContext) -> Catalogue:
    cached = ctx.caches.catalogue
    if cached is None:
        cached = Catalogue.with_file(ctx.settings.devices.catalogue)
        ctx.caches.catalogue = cached
    return cached


def _changed(ctx: ApiContext, device_id: str | None = None) -> None:
    cache = ctx.device_cache
    if cache is None:
        return
    if device_id is None:
        cache.refresh()
    else:
        cache.invalidate(device_id)


def _validated(raw: dict[str, Any], catalogue: Catalogue) -> Device:
    device, reasons = parse_device(raw, catalogue)
    if device is None:
        raise HTTPException(UNPROCESSABLE, reasons)
    return device


def _get(store: DeviceStore, device_id: str) -> Device:
    device = store.get(device_id) if valid_device_id(device_id) else None
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id[:64]!r} not found")
    return device


@router.get("")
def list_devices(
    _: Viewer, engine: EngineDep,
    type: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
    district: Annotated[str | None, Query(max_length=64)] = None,
    unit: Annotated[str | None, Query(max_length=128)] = None,
    status_: Annotated[LinkStatus | None, Query(alias="status")] = None,
    enabled: bool | None = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DevicesPublic:
    """Devices matching every given filter, by id, one page at a time."""
    store = DeviceStore(engine)
    devices, total = store.query(
        DeviceFilter(type=type, grid=grid, district=district, unit=unit, status=status_,
                     enabled=enabled), offset=offset, limit=limit)
    states = store.states([d.id for d in devices]) if devices else {}
    return DevicesPublic(data=[_public(d, states.get(d.id)) for d in devices], count=total)


@router.post("", status_code=status.HTTP_201_CREATED,
             responses={409: {"description": "the id exists"},
                        422: {"description": "invalid device"}})
def create_device(body: DeviceCreate, _: Admin, engine: EngineDep, ctx: Ctx) -> DevicePublic:
    """Register a device."""
    device = _validated(body.model_dump(mode="json"), _catalogue(ctx))
    try:
        DeviceStore(engine).create(device)
    except DeviceExistsError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    _changed(ctx, device.id)
    return _public(device, None)


MAX_IMPORT_BYTES = 64 * 1024 * 1024


@router.post("/import", responses={422: {"description": "bad rows; nothing imported"},
                                   413: {"description": "too large"}},
             openapi_extra={"requestBody": {"content": {
                 "text/csv": {"schema": {"type": "string"}},
                 "application/json": {"schema": {"type": "array", "items": {}}}}}})
async def import_devices(
    _: Admin, engine: EngineDep, ctx: Ctx, request: Request,
    skip_invalid: bool = False,
    format: Annotated[Literal["csv", "json"] | None, Query()] = None,
) -> Response:
    """Bulk import (CSV or JSON inventory body, same rules as ``lifeline devices import``)."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_IMPORT_BYTES:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                f"body larger than {MAX_IMPORT_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(UNPROCESSABLE,
                            f"body is not UTF-8 (byte {exc.start})") from exc
    ctype = request.headers.get("content-type", "")
    sniffed = "json" if text.lstrip()[:1] in ("[", "{") else "csv"
    kind = format or ("json" if "json" in ctype else "csv" if "csv" in ctype else sniffed)
    catalogue = _catalogue(ctx)
    return await run_in_threadpool(_import, engine, ctx, catalogue, text, kind, skip_invalid)


def _import(engine: Engine, ctx: ApiContext, catalogue: Catalogue, text: str, kind: str,
            skip_invalid: bool) -> Response:
    try:
        parsed = (parse_json if kind == "json" else parse_csv)(text, catalogue, source="body")
    except DevicesError as exc:
        raise HTTPException(UNPROCESSABLE, str(exc)) from exc
    if parsed.rows > MAX_IMPORT_ROWS:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                            f"{parsed.rows} rows; at most {MAX_IMPORT_ROWS} per request")
    problems = [ImportProblem(where=p.where, id=p.device_id, reasons=list(p.reasons))
                for p in parsed.problems]
    imported = not problems or skip_invalid
    counts = None
    if imported:
        counts = DeviceStore(engine).upsert_many(parsed.devices)
        _changed(ctx)
    result = DeviceImportPublic(
        imported=imported, created=counts.created if counts else 0,
        updated=counts.updated if counts else 0, unchanged=counts.unchanged if counts else 0,
        rows=parsed.rows, problems=problems)
    code = status.HTTP_200_OK if imported else UNPROCESSABLE
    return Response(result.model_dump_json(), status_code=code, media_type="application/json")


@router.get("/{device_id}", responses={404: {"description": "no such device"}})
def get_device(device_id: str, _: Viewer, engine: EngineDep) -> DevicePublic:
    """One device with its status."""
    store = DeviceStore(engine)
    device = _get(store, device_id)
    return _public(device, store.states([device.id]).get(device.id))


@router.patch("/{device_id}", responses={404: {"description": "no such device"},
                                         422: {"description": "invalid change"}})
def update_device(device_id: str, body: DeviceUpdate, _: Admin, engine: EngineDep,
                  ctx: Ctx) -> DevicePublic:
    """Change some fields of a device."""
    store = DeviceStore(engine)
    current = _get(store, device_id)
    raw = device_row(current)
    raw.update(body.model_dump(mode="json", exclude_unset=True))
    device = _validated(raw, _catalogue(ctx))
    try:
        store.replace(device)
    except DeviceNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    _changed(ctx, device.id)
    return _public(device, store.states([device.id]).get(device.id))


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={404: {"description": "no such device"}})
def delete_device(device_id: str, _: Admin, engine: EngineDep, ctx: Ctx) -> Response:
    """Soft-delete a device (an import or create brings it back)."""
    if not valid_device_id(device_id) or not DeviceStore(engine).delete(device_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"device {device_id[:64]!r} not found")
    _changed(ctx, device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{device_id}/latest", responses={404: {"description": "no such device"}})
def device_latest(device_id: str, _: Viewer, engine: EngineDep, ctx: Ctx) -> DeviceLatestPublic:
    """Status, the latest value of each metric (from InfluxDB), recent changes and events."""
    store = DeviceStore(engine)
    device = _get(store, device_id)
    readings: dict[str, dict[str, Any]] = {}
    error: str | None = None
    settings = ctx.settings
    dtype = _catalogue(ctx).types.get(device.type)
    try:
        if dtype is not None:
            readings = _latest_readings(settings, device, list(dtype.metrics))
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        error = f"InfluxDB: {type(exc).__name__}: {str(exc)[:200]}"
        log.warning("latest readings unavailable device=%s: %s", device.id, error)
    state = store.states([device.id]).get(device.id) or DeviceState(device.id)
    return DeviceLatestPublic(
        id=device.id, status=_status(state), readings=readings, readings_error=error,
        changes=[StatusChangePublic(at=_ts(c.ts_ns) or datetime.now(UTC), change=c.change.value,
                                    reason=c.reason) for c in store.changes(device.id, 20)],
        events=[DeviceEventPublic(at=_ts(e.event.ts_ns) or datetime.now(UTC),
                                  type=e.event.type.value, level=e.event.level,
                                  metric=e.event.metric, value=e.event.value,
                                  severity=e.severity) for e in store.events(device.id, 20)],
    )


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _latest_readings(settings: Settings, device: Device,
                     metrics: list[str]) -> dict[str, dict[str, Any]]:
    inf = settings.influx
    if inf.version != 1:
        raise ValueError("latest readings are read with InfluxQL (influx.version = 1)")
    # device ids match [A-Za-z0-9_.-]: safe inside a single-quoted InfluxQL string.
    where = f"WHERE \"device\" = '{device.id}'"
    query = ";".join(
        f"SELECT last({_quote_ident(m)}) FROM {_quote_ident(device.type)} {where}"  # noqa: S608
        for m in metrics)
    params = {"db": inf.database, "q": query, "epoch": "ms"}
    # Basic auth, not u=/p= in the URL: an error message quoting the URL (returned in
    # readings_error) must not carry the password.
    auth = (inf.username, inf.password.get_secret_value()) if inf.username else None
    resp = httpx.get(f"{inf.url}/query", params=params, auth=auth, timeout=5.0)
    resp.raise_for_status()
    out: dict[str, dict[str, Any]] = {}
    for metric, result in zip(metrics, resp.json().get("results", []), strict=False):
        for series in result.get("series", []):
            for ts_ms, value in series.get("values", []):
                if value is not None:
                    out[metric] = {"value": value,
                                   "at": datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat()}
    return out
