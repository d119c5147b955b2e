"""Credentials never shown: URL passwords and tokens in settings, logs, API answers and errors;
risky but legal settings warned about at start-up."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from lifeline.app import create_app
from lifeline.cli import main
from lifeline.db import open_database
from lifeline.errors import ConfigError
from lifeline.logs import RedactingFilter
from lifeline.redaction import REDACTED, mask_urls
from lifeline.settings import load_settings, masked, risky_settings

SECRET = "s3cr3t-Pa55word"


@pytest.mark.parametrize(("text", "expected"), [
    (f"https://user:{SECRET}@host/path", f"https://user:{REDACTED}@host/path"),
    (f"postgresql+psycopg://lifeline:{SECRET}@db:5432/x", f"postgresql+psycopg://lifeline:{REDACTED}@db:5432/x"),
    (f"https://{SECRET}@hooks.example/x", f"https://{REDACTED}@hooks.example/x"),
    ("https://user:p@ss@host/x", f"https://user:{REDACTED}@host/x"),  # an unencoded '@'
    (f"https://h/robot/send?access_token={SECRET}&x=1", f"https://h/robot/send?access_token={REDACTED}&x=1"),
    (f"http://h/w?timestamp=1&sign={SECRET}", f"http://h/w?timestamp=1&sign={REDACTED}"),
    (f"http://[::1]:8086/?u=a&p=b&password={SECRET}", f"http://[::1]:8086/?u=a&p=b&password={REDACTED}"),
    (f"two: mqtt://a:{SECRET}@b and http://c:{SECRET}x@d/", f"two: mqtt://a:{REDACTED}@b and http://c:{REDACTED}@d/"),
    ("http://127.0.0.1:8086", "http://127.0.0.1:8086"),  # nothing to mask
    ("https://host/path?limit=100&before=7", "https://host/path?limit=100&before=7"),
    ("no url here, key=value", "no url here, key=value"),
    ("mailto user@example.org", "mailto user@example.org"),
])
def test_url_credentials_are_masked(text: str, expected: str) -> None:
    assert mask_urls(text) == expected
    assert mask_urls(mask_urls(text)) == expected  # idempotent


def test_config_check_masks_credentials_embedded_in_urls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("LIFELINE_INFLUX__URL", f"https://reader:{SECRET}@influx.example:8086")
    monkeypatch.setenv("LIFELINE_DATABASE__URL", f"postgresql://lifeline:{SECRET}@db.example/x")
    monkeypatch.setenv("LIFELINE_WEBHOOK__URL", f"http://dispatch:{SECRET}@dispatch.example/h")
    monkeypatch.setenv("LIFELINE_WEBHOOK__SECRET", "0123456789abcdef-secret")
    monkeypatch.setenv("LIFELINE_GRAFANA__URL", f"https://grafana.example/?token={SECRET}")
    assert main(["config", "check"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    doc = orjson.loads(out)
    assert doc["influx"]["url"] == f"https://reader:{REDACTED}@influx.example:8086"
    assert doc["database"]["url"] == f"postgresql://lifeline:{REDACTED}@db.example/x"
    assert doc["webhook"]["secret"] == REDACTED
    # the plain-http webhook to another host is legal but warned about
    assert "warning: webhook.url is plain http://" in err


def test_invalid_url_errors_mask_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, run_dir=tmp_path, influx={"url": f"ftp://u:{SECRET}@h/"})
    assert SECRET not in str(info.value) and "influx.url" in str(info.value)


def test_cli_error_lines_mask_url_credentials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELINE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("LIFELINE_INFLUX__URL", f"ftp://u:{SECRET}@h/")
    assert main(["config", "check"]) == 2
    err = capsys.readouterr().err
    assert "influx.url" in err and SECRET not in err and REDACTED in err


def test_logs_mask_url_credentials_without_configured_secrets() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1,
                               "cannot reach %s: %s", (f"https://u:{SECRET}@h/", "refused"), None)
    assert RedactingFilter([]).filter(record)
    assert record.getMessage() == f"cannot reach https://u:{REDACTED}@h/: refused"
    try:
        raise RuntimeError(f"connect to postgresql://l:{SECRET}@db/x failed")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    RedactingFilter([]).filter(record)
    assert record.exc_text and SECRET not in record.exc_text


def test_readiness_details_mask_url_credentials(tmp_path: Path) -> None:
    settings = load_settings(None, run_dir=tmp_path)
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    app = create_app(settings, engine, {
        "influx": lambda: (False, f"https://u:{SECRET}@influx.example unreachable")})
    body = TestClient(app).get("/readyz").json()
    assert body["checks"]["influx"]["detail"] == f"https://u:{REDACTED}@influx.example unreachable"


def test_masked_settings_keep_urls_without_credentials(tmp_path: Path) -> None:
    settings = load_settings(None, run_dir=tmp_path)
    assert masked(settings)["influx"]["url"] == "http://127.0.0.1:8086"


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, []),
    ({"webhook": {"url": "http://127.0.0.1:9000/h", "secret": "x" * 16}}, []),
    ({"webhook": {"url": "https://dispatch.example/h", "secret": "x" * 16}}, []),
    ({"webhook": {"url": "http://dispatch.example/h", "secret": "x" * 16}}, ["webhook.url"]),
    ({"api": {"host": "0.0.0.0"}}, ["api.host"]),
    ({"api": {"host": "::1"}}, []),
    ({"api": {"host": "10.1.2.3", "enabled": False}}, []),
    ({"mqtt": {"host": "broker.example", "username": "svc", "password": "pw-123456"}}, ["mqtt"]),
    ({"mqtt": {"host": "broker.example", "username": "svc", "tls": True}}, []),
    ({"mqtt": {"host": "localhost", "username": "svc", "password": "pw-123456"}}, []),
    ({"influx": {"url": "http://influx.example:8086", "password": "pw-123456"}}, ["influx"]),
    ({"grafana": {"url": "http://grafana.example", "token": "glsa_0123456789"}}, ["grafana"]),
])
def test_risky_settings_are_named(tmp_path: Path, overrides: dict[str, dict[str, object]],
                                  expected: list[str]) -> None:
    found = risky_settings(load_settings(None, run_dir=tmp_path, **overrides))
    assert [w.split(" ")[0].split(".")[0] for w in found] == [e.split(".")[0] for e in expected]
