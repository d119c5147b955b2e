"""Settings: TOML + environment, validation errors naming the key, secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.errors import ConfigError
from lifeline.settings import config_path, load_settings, masked

SECRET = "s3cr3t-value-long-enough"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lifeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("LIFELINE_"):
            monkeypatch.delenv(key)
    s = load_settings(None)
    assert s.mqtt.qos == 1
    assert s.database_url.startswith("sqlite:///")


def test_toml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[mqtt]\nport = 1999\nprefix = \"city\"\n")
    monkeypatch.setenv("LIFELINE_MQTT__PORT", "2999")
    s = load_settings(path)
    assert (s.mqtt.port, s.mqtt.prefix) == (2999, "city")


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "lifeline.example.toml"
    s = load_settings(example)
    assert s.mqtt.prefix == "lifeline"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nqos = 3\n", "mqtt.qos"),
        ("[mqtt]\nprefix = \"a/#\"\n", "mqtt.prefix"),
        ("[mqtt]\nsession_expiry = \"forever\"\n", "mqtt.session_expiry"),
        ("[mqtt]\nshared_group = \"a/b\"\n", "mqtt.shared_group"),
        ("[influx]\nurl = \"ftp://x\"\n", "influx.url"),
        ("[influx]\nbatch_lines = 0\n", "influx.batch_lines"),
        ("[ingest]\nmax_future = \"soon\"\n", "ingest.max_future"),
        ("[ingest]\nraw_buffer_max = -1\n", "ingest.raw_buffer_max"),
        ("[ingest]\nbatch_messages = 5000\nraw_buffer_max = 9999\n", "raw_buffer_max"),
        ("[webhook]\nurl = \"http://x\"\nsecret = \"short\"\n", "webhook"),
        ("[database]\nurl = \"mysql://x\"\n", "database.url"),
        ("[mqtt]\nbogus = 1\n", "mqtt.bogus"),
        ("log_level = \"LOUD\"\n", "log_level"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert key in str(info.value)


def test_raw_buffer_limit_bounds() -> None:
    assert load_settings(None, ingest={"raw_buffer_max": 0}).ingest.raw_buffer_max == 0
    s = load_settings(None, ingest={"batch_messages": 500, "raw_buffer_max": 1000})
    assert s.ingest.raw_buffer_max == 1000  # exactly twice a batch
    with pytest.raises(ConfigError, match="twice batch_messages"):
        load_settings(None, ingest={"batch_messages": 500, "raw_buffer_max": 999})


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        load_settings(write(tmp_path, "[mqtt]\nport = = 1\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_env_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_INFLUX__BATCH_LINES", "lots")
    with pytest.raises(ConfigError, match=r"influx\.batch_lines"):
        load_settings(None)


def test_secrets_are_masked_and_never_in_errors(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, f'[webhook]\nurl = "http://h/x"\nsecret = "{SECRET}"\n'
                                      f'[mqtt]\npassword = "{SECRET}"\n'))
    shown = masked(s)
    assert shown["webhook"]["secret"] == "********"
    assert shown["mqtt"]["password"] == "********"
    assert SECRET not in repr(shown)
    assert s.webhook.secret.get_secret_value() == SECRET
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, '[webhook]\nurl = "http://h/x"\nsecret = "tiny-secret"\n'))
    assert "tiny-secret" not in str(info.value)


def test_config_path_resolution(tmp_path: Path) -> None:
    assert config_path(tmp_path / "a.toml", {}) == tmp_path / "a.toml"
    assert config_path(None, {"LIFELINE_CONFIG": "/etc/x.toml"}) == Path("/etc/x.toml")
