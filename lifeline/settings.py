"""Settings: one model, read once from ``lifeline.toml`` and ``LIFELINE_*`` variables.

Built in the composition root and passed down; nothing else reads the environment.
Precedence: explicit values > environment > TOML file > defaults.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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

from lifeline.errors import ConfigError
from rules.model import parse_duration_ns

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
    session_expiry: str = "1h"
    keepalive: int = Field(default=30, ge=5, le=3600)
    username: str = ""
    password: SecretStr = SecretStr("")
    tls: bool = False
    tls_ca_file: str = ""
    shared_group: str = ""
    connect_timeout: str = "30s"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be non-empty, without '+', '#' or leading/trailing '/'")
        return v

    @field_validator("session_expiry", "connect_timeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration_ns(v)
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

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class IngestSettings(_Section):
    """Decoding limits and batching."""

    max_payload_bytes: int = Field(default=256 * 1024, ge=64, le=16 * 1024 * 1024)
    max_future: str = "5m"
    max_past: str = "30d"
    batch_messages: int = Field(default=5000, ge=1, le=1_000_000)
    flush_interval: float = Field(default=0.1, gt=0, le=10)

    @field_validator("max_future", "max_past")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration_ns(v)
        return v


class DevicesSettings(_Section):
    """Device registry sources."""

    inventory: Path | None = None
    catalogue: Path | None = None


class RulesSettings(_Section):
    """Rule files and directories."""

    paths: list[Path] = Field(default_factory=lambda: [builtin_rules_dir()])


class WebhookSettings(_Section):
    """The dispatch system's webhook endpoint."""

    url: str = ""
    secret: SecretStr = SecretStr("")
    timeout: float = Field(default=5.0, gt=0, le=120)
    max_attempts: int = Field(default=10, ge=1, le=1000)

    @model_validator(mode="after")
    def _secret_required(self) -> WebhookSettings:
        if self.url:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError("url: must start with http:// or https://")
            if len(self.secret.get_secret_value()) < 16:
                raise ValueError("secret: at least 16 characters are required when url is set")
        return self


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
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    devices: DevicesSettings = Field(default_factory=DevicesSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @property
    def database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the run directory."""
        return self.database.url or f"sqlite:///{self.run_dir / 'lifeline.db'}"

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
            tomllib.loads(path.read_text("utf-8"))
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
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
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
            return "********" if model.get_secret_value() else ""
        return node

    result: dict[str, Any] = walk(data, settings)
    return result
