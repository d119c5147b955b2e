"""Logs: JSON lines with context, and secrets never written."""

from __future__ import annotations

import logging

import orjson
import pytest

from lifeline.logs import setup_logging
from lifeline.redaction import REDACTED
from lifeline.settings import load_settings, secret_values

SECRET = "hook-secret-0123456789"
PASSWORD = "broker-pass-98765"


def test_secret_values_are_collected_from_every_section() -> None:
    settings = load_settings(None, webhook={"url": "http://x/y", "secret": SECRET},
                             mqtt={"password": PASSWORD})
    assert set(secret_values(settings)) == {SECRET, PASSWORD}


def test_json_logs_carry_context_and_redact_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json", [SECRET, PASSWORD])
    log = logging.getLogger("lifeline.test")
    log.info("posting with secret %s to %s", SECRET, "http://x", extra={"device": "ga-1"})
    try:
        raise RuntimeError(f"auth failed for {PASSWORD}")
    except RuntimeError:
        log.exception("broker refused", extra={"rule": "r1"})
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["msg"] == f"posting with secret {REDACTED} to http://x"
    assert lines[0]["device"] == "ga-1" and lines[0]["level"] == "INFO"
    assert lines[1]["rule"] == "r1" and "RuntimeError" in lines[1]["exc"]
    text = orjson.dumps(lines).decode()
    assert SECRET not in text and PASSWORD not in text


def test_text_logs_redact_too(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", "text", [SECRET])
    logging.getLogger("x").debug("token=%s", SECRET)
    err = capsys.readouterr().err
    assert REDACTED in err and SECRET not in err
