"""Settings: one model, read once from ``lifeline.toml`` and ``LIFELINE_*`` variables.

Built in the composition root and passed down; nothing else reads the environment.
Precedence: explicit values > environment > TOML file > defaults.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from common import safetoml
from common.duration import NO_DURATION, Duration, OptionalDuration
from common.severity import SEVERITY_NAMES, Severity
from common.timezone import check_timezone
from lifeline.clock import parse_instant_ns
from lifeline.errors import ConfigError
from lifeline.notify_settings import NotifySettings
from lifeline.redaction import REDACTED, mask_urls

CONFIG_ENV = "LIFELINE_CONFIG"
DEFAULT_CONFIG = Path("lifeline.toml")


def builtin_rules_dir() -> Path:
    """The directory of rule files shipped with the package."""
    return Path(str(resources.files("rules").joinpath("builtin")))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttSettings(_Section):
    """Broker connection and subscription."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    prefix: str = "lifeline"
    client_id: str = Field(default="lifeline-serve", min_length=1, max_length=128)
    protocol: Literal[5, 311] = 5
    qos: int = Field(default=1, ge=0, le=2)
    clean_start: bool = False
    session_expiry: Duration = Duration("1h")
    keepalive: int = Field(default=30, ge=5, le=3600)
    username: str = ""
    password: SecretStr = SecretStr("")
    tls: bool = False
    tls_ca_file: str = ""
    shared_group: str = ""
    connect_timeout: Duration = Duration("30s")
    buffered_reads: bool = True  # paho reads through one 64 KiB recv (ingest.mqttsocket)
    network_process: bool = True  # paho in a process of its own (ingest.netproc)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be non-empty, without '+', '#' or leading/trailing '/'")
        return v

    @field_validator("shared_group")
    @classmethod
    def _group(cls, v: str) -> str:
        if any(c in v for c in "/+#"):
            raise ValueError("must not contain '/', '+' or '#'")
        return v


class InfluxSettings(_Section):
    """Where readings are stored."""

    url: str = "http://127.0.0.1:8086"
    version: Literal[1, 2] = 1
    database: str = "lifeline"
    retention_policy: str = ""
    username: str = ""
    password: SecretStr = SecretStr("")
    org: str = ""
    bucket: str = ""
    token: SecretStr = SecretStr("")
    gzip: bool = False
    batch_lines: int = Field(default=5000, ge=1, le=100_000)
    flush_interval: float = Field(default=0.2, gt=0, le=60)
    create_database: bool = True
    timeout: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=3, ge=0, le=100)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _v2_needs_bucket(self) -> InfluxSettings:
        if self.version == 2 and (not self.org or not self.bucket):
            raise ValueError("org and bucket are required when version = 2")
        return self


class IngestSettings(_Section):
    """Decoding limits and batching."""

    max_payload_bytes: int = Field(default=256 * 1024, ge=64, le=16 * 1024 * 1024)
    max_future: Duration = Duration("5m")
    max_past: Duration = Duration("30d")
    batch_messages: int = Field(default=5000, ge=1, le=1_000_000)
    # the decoder's wait for a partial batch: on the path of every alert (20 ms: ~10 ms
    # added on average; a batch costs ~1 ms of fixed CPU, `lifeline bench latency`)
    flush_interval: float = Field(default=0.02, gt=0, le=10)
    dedup_window: int = Field(default=200_000, ge=0, le=50_000_000)
    # messages received but not yet decoded; at the limit the subscriber stops reading
    # the socket and the broker holds the rest (0: no limit)
    raw_buffer_max: int = Field(default=100_000, ge=0, le=50_000_000)
    spool_dir: Path | None = None
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20, le=1 << 40)
    spool_fsync: bool = True
    dlq_max_rows: int = Field(default=1_000_000, ge=100, le=100_000_000)
    metrics_interval: Duration = Duration("10s")

    @field_validator("metrics_interval")
    @classmethod
    def _interval(cls, v: Duration) -> Duration:
        if v.ns < 1_000_000_000:
            raise ValueError("must be at least 1s")
        return v

    @model_validator(mode="after")
    def _raw_buffer(self) -> IngestSettings:
        if 0 < self.raw_buffer_max < 2 * self.batch_messages:
            raise ValueError(
                f"raw_buffer_max ({self.raw_buffer_max}) must be 0 (no limit) or at least "
                f"twice batch_messages ({2 * self.batch_messages}): the decoder waits for "
                "whole batches")
        return self


class DevicesSettings(_Section):
    """Device registry sources and online/offline tracking."""

    inventory: Path | None = None
    catalogue: Path | None = None
    holdoff: Duration = Duration("60s")
    will_grace: Duration = Duration("2s")
    check_interval: Duration = Duration("5s")
    refresh_interval: Duration = Duration("30s")
    mass_offline_fraction: float = Field(default=0.5, gt=0, le=1)
    mass_offline_min: int = Field(default=10, ge=1, le=1_000_000)
    offline_alerts: bool = True

    @field_validator("holdoff", "will_grace", "check_interval", "refresh_interval")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if not 0 < v.ns <= 24 * 3600 * 1_000_000_000:
            raise ValueError("must be > 0 and at most 1 day")
        return v


class RulesSettings(_Section):
    """Rule files and directories, rule state persistence, time zone of mnf windows."""

    paths: list[Path] = Field(default_factory=lambda: [builtin_rules_dir()])
    timezone: str = "Asia/Shanghai"
    state_file: str = "rules-state.npz"
    tick_interval: Duration = Duration("10s")
    save_interval: Duration = Duration("5m")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        return check_timezone(v)

    @field_validator("state_file")
    @classmethod
    def _state_file(cls, v: str) -> str:
        if v and (Path(v).is_absolute() or ".." in Path(v).parts):
            raise ValueError("must be a file name relative to run_dir (or empty: no state)")
        return v

    @field_validator("tick_interval", "save_interval")
    @classmethod
    def _interval(cls, v: Duration) -> Duration:
        if not 1_000_000_000 <= v.ns <= 3600 * 1_000_000_000:
            raise ValueError("must be between 1s and 1h")
        return v


class WebhookSettings(_Section):
    """The dispatch system's webhook endpoint."""

    url: str = ""
    secret: SecretStr = SecretStr("")
    timeout: float = Field(default=5.0, gt=0, le=120)
    max_attempts: int = Field(default=0, ge=0, le=1000)  # 0: retry until max_age
    max_age: Duration = Duration("24h")
    base_delay: float = Field(default=0.5, gt=0, le=600)
    max_delay: float = Field(default=300.0, gt=0, le=86400)
    concurrency: int = Field(default=4, ge=1, le=64)
    fallback_url: str = ""
    fallback_after: Duration = Duration("5m")
    callback_window: Duration = Duration("5m")

    @field_validator("max_age", "fallback_after", "callback_window")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if v.ns <= 0:
            raise ValueError("must be a positive duration")
        return v

    @model_validator(mode="after")
    def _secret_required(self) -> WebhookSettings:
        if self.url or self.fallback_url:
            for key in ("url", "fallback_url"):
                value = getattr(self, key)
                if value and not value.startswith(("http://", "https://")):
                    raise ValueError(f"{key}: must start with http:// or https://")
            if len(self.secret.get_secret_value()) < 16:
                raise ValueError("secret: at least 16 characters are required when url is set")
        if self.fallback_url and not self.url:
            raise ValueError("fallback_url: needs url (the primary endpoint) too")
        if self.max_delay < self.base_delay:
            raise ValueError("max_delay: must be >= base_delay")
        return self


class AlertsSettings(_Section):
    """Alert lifecycle and noise control."""

    pending_for: Duration = Duration("0s")
    reopen_window: Duration = Duration("5m")
    resolve_delay: Duration = Duration("1m")
    flap_window: Duration = Duration("30m")
    flap_threshold: int = Field(default=6, ge=2, le=1000)
    tick_interval: float = Field(default=1.0, gt=0, le=60)

    @field_validator("pending_for", "reopen_window", "resolve_delay", "flap_window")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if v.ns > 30 * 86400 * 10**9:
            raise ValueError("must be at most 30d")
        return v

    @model_validator(mode="after")
    def _flap(self) -> AlertsSettings:
        if self.flap_window.ns <= 0:
            raise ValueError("flap_window: must be positive")
        return self


class RouteSettings(_Section):
    """A routing table row: grid and device type (``*`` = any) → responsible unit."""

    grid: str = Field(default="*", min_length=1, max_length=64)
    device_type: str = Field(default="*", min_length=1, max_length=64)
    unit: str = Field(min_length=1, max_length=128)


class DeadlineSettings(_Section):
    """Per-stage deadlines; empty = no deadline for that stage."""

    registration: OptionalDuration = NO_DURATION
    dispatch: OptionalDuration = NO_DURATION
    handle: OptionalDuration = NO_DURATION
    verify: OptionalDuration = NO_DURATION

    @field_validator("registration", "dispatch", "handle", "verify")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if v and v.ns <= 0:
            raise ValueError("must be a positive duration or empty")
        return v


def _default_deadlines() -> dict[str, DeadlineSettings]:
    stages = ("registration", "dispatch", "handle", "verify")
    return {severity: DeadlineSettings.model_validate(dict(zip(stages, texts, strict=True)))
            for severity, texts in (("critical", ("5m", "5m", "1h", "1h")),
                                    ("major", ("15m", "30m", "4h", "4h")),
                                    ("minor", ("1h", "2h", "24h", "24h")),
                                    ("warning", ("4h", "8h", "72h", "72h")))}


class CasesSettings(_Section):
    """Case workflow: creation, grouping, routing, deadlines, verification, KPIs."""

    auto_register_severity: Severity = Severity.MAJOR
    min_severity: Severity = Severity.WARNING
    group_window: Duration = Duration("10m")
    default_unit: str = Field(default="城市运行管理中心", min_length=1, max_length=128)
    routing: list[RouteSettings] = Field(default_factory=list)
    deadlines: dict[str, DeadlineSettings] = Field(default_factory=_default_deadlines)
    verify_after: Duration = Duration("5m")
    auto_verify: bool = True
    auto_close: bool = True
    redispatch_on_return: bool = True
    kpi_interval: Duration = Duration("1m")
    kpi_period: Duration = Duration("24h")

    @field_validator("group_window", "verify_after", "kpi_interval", "kpi_period")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if v.ns <= 0:
            raise ValueError("must be a positive duration")
        return v

    @field_validator("deadlines")
    @classmethod
    def _keys(cls, v: dict[str, DeadlineSettings]) -> dict[str, DeadlineSettings]:
        for key in v:
            severity = key.rsplit("/", 1)[-1]
            if severity not in SEVERITY_NAMES:
                raise ValueError(f"key {key!r}: use a severity or 'device_type/severity'")
        return v


class DatabaseSettings(_Section):
    """The service database (devices, cases, outbox, dead letters)."""

    url: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


class ApiToken(_Section):
    """An API token, stored only as the SHA-256 hex digest of the token."""

    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "admin"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ApiSettings(_Section):
    """The HTTP API. Every route but /healthz and /readyz needs a bearer token."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    tokens: list[ApiToken] = Field(default_factory=list)
    # Request bodies over these are answered 413 naming the setting.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_import_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)


class GrafanaSettings(_Section):
    """Where ``lifeline dashboards push`` sends the dashboards, and how they are set up."""

    url: str = ""
    token: SecretStr = SecretStr("")
    folder: str = Field(default="citylifeline", max_length=128)
    datasource_name: str = Field(default="lifeline InfluxDB", min_length=1, max_length=128)
    datasource_uid: str = Field(default="lifeline-influxdb", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    timezone: str = "Asia/Shanghai"
    timeout: float = Field(default=10.0, gt=0, le=300)
    # data links from dashboard tables: the lifeline API as duty staff's browsers reach it
    # (default http://<api.host>:<api.port>), and a case's page in the dispatch system
    # ("{case_id}" = lifeline's case id; default: the API's /api/v1/cases/{case_id})
    api_url: str = ""
    case_url: str = Field(default="", max_length=1000)

    @field_validator("url", "api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be empty or start with http:// or https://")
        return v.rstrip("/")

    @field_validator("case_url")
    @classmethod
    def _case_url(cls, v: str) -> str:
        if v and (not v.startswith(("http://", "https://")) or "{case_id}" not in v):
            raise ValueError("must be empty or an http(s) URL containing {case_id}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)


class ClockSettings(_Section):
    """``[clock]``: the time the service's timers follow (see lifeline/clock.py)."""

    source: Literal["wall", "event"] = "wall"  # event: reading times (simulation, replay)
    start: str = ""  # event: RFC 3339 time the clock starts at, before the first reading

    @model_validator(mode="after")
    def _start_for_event(self) -> ClockSettings:
        if self.source == "event":
            if not self.start:
                raise ValueError("source = 'event' needs start (RFC 3339, e.g. "
                                 "2026-03-05T00:00:00+08:00)")
            try:
                parse_instant_ns(self.start)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc
        return self


class HaSettings(_Section):
    """``[ha]``: active/standby leadership (see lifeline/leadership.py)."""

    enabled: bool = False
    group: str = Field(default="lifeline", min_length=1, max_length=64)
    node_id: str = Field(default="", max_length=128)  # empty: hostname-pid
    lease: Duration = Duration("8s")  # + poll 0.5 s + start-up: serving within 10 s
    renew_interval: Duration = Duration("2s")
    poll_interval: Duration = Duration("500ms")
    # the API URL the other nodes forward writes to (empty: http://<hostname>:<api.port>)
    advertise_url: str = Field(default="", max_length=512)
    # rule state and recent de-duplication keys saved to the database this often
    state_interval: Duration = Duration("5s")
    dedup_keys: int = Field(default=20_000, ge=0, le=1_000_000)  # keys saved (most recent)

    @field_validator("advertise_url")
    @classmethod
    def _advertise_url(cls, v: str) -> str:
        if v and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must be an http:// or https:// URL (or empty)")
        return v.rstrip("/")

    @field_validator("lease", "renew_interval", "poll_interval", "state_interval")
    @classmethod
    def _duration(cls, v: Duration) -> Duration:
        if not 0 < v.ns <= 3600 * 1_000_000_000:
            raise ValueError("must be > 0 and at most 1 hour")
        return v

    @model_validator(mode="after")
    def _timing(self) -> HaSettings:
        # the elector steps down at lease - lease/5 without a renewal: two tries must fit
        if self.renew_interval.ns * 2 > self.lease.ns * 4 // 5:
            raise ValueError("renew_interval must be at most 2/5 of lease "
                             "(two renewals before the leader steps down)")
        if self.poll_interval.ns > self.lease.ns:
            raise ValueError("poll_interval must not exceed lease")
        return self


class Settings(BaseSettings):
    """Every setting of the service."""

    model_config = SettingsConfigDict(
        env_prefix="LIFELINE_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    run_dir: Path = Path("run")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    devices: DevicesSettings = Field(default_factory=DevicesSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    alerts: AlertsSettings = Field(default_factory=AlertsSettings)
    cases: CasesSettings = Field(default_factory=CasesSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    grafana: GrafanaSettings = Field(default_factory=GrafanaSettings)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    ha: HaSettings = Field(default_factory=HaSettings)

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the run directory."""
        return self.database.url or f"sqlite:///{self.run_dir / 'lifeline.db'}"

    @model_validator(mode="after")
    def _ha_needs_a_shared_session(self) -> Settings:
        # a takeover hands the broker's queue to the next leader: only a persistent
        # session, owned by the service and not shared with other consumers, has one
        if self.ha.enabled:
            m = self.mqtt
            if m.clean_start or (m.protocol == 5 and m.session_expiry.ns == 0):
                raise ValueError("ha.enabled needs a persistent MQTT session "
                                 "(mqtt.clean_start = false and mqtt.session_expiry > 0)")
            if m.shared_group:
                raise ValueError("ha.enabled: active/standby is one consumer; "
                                 "mqtt.shared_group must be empty")
            if m.qos == 0:
                raise ValueError("ha.enabled needs mqtt.qos 1 or 2 (QoS 0 is never queued "
                                 "nor redelivered across a takeover)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def config_path(explicit: Path | None, environ: dict[str, str] | None = None) -> Path | None:
    """The config file to read: ``--config``, else ``$LIFELINE_CONFIG``, else ./lifeline.toml."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once; raise :class:`ConfigError` naming the bad key."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            if path.stat().st_size > safetoml.MAX_TOML_BYTES:
                raise ConfigError(f"{path}: larger than {safetoml.MAX_TOML_BYTES} bytes")
            safetoml.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: TOML syntax error: {exc}") from exc
    cls: type[Settings] = Settings
    if path is not None:
        cls = type("Settings", (Settings,), {
            "model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": path}),
            "__doc__": Settings.__doc__,
        })
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc


def _describe(exc: ValidationError, path: Path | None) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "settings"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = ("" if isinstance(got, dict) or err["type"] == "missing"
                 else f" (got {mask_urls(repr(got))})")
        if "secret" in key or "password" in key or "token" in key:
            shown = ""
        lines.append(f"  {key}: {msg}{shown}")
    where = f" in {path}" if path else ""
    return f"invalid configuration{where}:\n" + "\n".join(lines)


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data with every secret masked."""
    data: dict[str, Any] = settings.model_dump(mode="json")

    def walk(node: Any, model: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, getattr(model, k, None)) for k, v in node.items()}
        if isinstance(model, SecretStr):
            return REDACTED if model.get_secret_value() else ""
        if isinstance(node, str):
            return mask_urls(node)
        if isinstance(node, list):
            models = model if isinstance(model, list) else [None] * len(node)
            return [walk(item, m) for item, m in zip(node, models, strict=False)]
        return node

    result: dict[str, Any] = walk(data, settings)
    return result


def secret_values(settings: BaseModel) -> list[str]:
    """Every non-empty secret in the settings (for log redaction)."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, BaseModel):
                        walk(item)

    walk(settings)
    return found


def _loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain_http_to_remote(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and not _loopback(parts.hostname or "")


def risky_settings(settings: Settings) -> list[str]:
    """Legal but risky choices, one sentence each, for a warning at start-up."""
    found: list[str] = []
    for key in ("url", "fallback_url"):
        url = getattr(settings.webhook, key)
        if url and _plain_http_to_remote(url):
            found.append(f"webhook.{key} is plain http:// to another host: the signature protects "
                         "integrity, but case details and addresses travel unencrypted")
    api = settings.api
    if api.enabled and not _loopback(api.host):
        found.append(f"api.host {api.host} is not a loopback address: the API serves plain HTTP, "
                     "so bearer tokens cross the network in clear unless a TLS proxy is in front")
    mqtt = settings.mqtt
    if (mqtt.username or mqtt.password.get_secret_value()) and not mqtt.tls \
            and not _loopback(mqtt.host):
        found.append(f"mqtt credentials are sent to {mqtt.host} without TLS (mqtt.tls = false)")
    inf = settings.influx
    if (inf.password.get_secret_value() or inf.token.get_secret_value()) \
            and _plain_http_to_remote(inf.url):
        found.append("influx credentials are sent over plain http:// to another host")
    if settings.ha.enabled and settings.database_url.startswith("sqlite"):
        found.append("ha.enabled with a SQLite database: the lease and the fencing hold for "
                     "nodes on this one machine only; nodes on several machines need "
                     "PostgreSQL (database.url)")
    graf = settings.grafana
    if graf.token.get_secret_value() and graf.url and _plain_http_to_remote(graf.url):
        found.append("grafana.token is sent over plain http:// to another host")
    return found
