"""The ``devices`` settings: defaults valid, unsafe values refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.errors import ConfigError
from lifeline.settings import load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("LIFELINE_"):
            monkeypatch.delenv(key)
    s = load_settings(None)
    d = s.devices
    assert (d.holdoff, d.will_grace, d.check_interval, d.refresh_interval) == (
        "60s", "2s", "5s", "30s")
    assert d.mass_offline_fraction == 0.5 and d.mass_offline_min == 10 and d.offline_alerts


@pytest.mark.parametrize(("text", "key"), [
    ('holdoff = "soon"', "devices.holdoff"),
    ('holdoff = "0s"', "devices.holdoff"),
    ('will_grace = "2d"', "devices.will_grace"),
    ('check_interval = "-1s"', "devices.check_interval"),
    ('refresh_interval = ""', "devices.refresh_interval"),
    ("mass_offline_fraction = 0", "devices.mass_offline_fraction"),
    ("mass_offline_fraction = 1.5", "devices.mass_offline_fraction"),
    ("mass_offline_min = 0", "devices.mass_offline_min"),
    ('offline_alerts = "maybe"', "devices.offline_alerts"),
    ("silence = 3", "devices.silence"),
])
def test_unsafe_values_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "lifeline.toml"
    path.write_text(f"[devices]\n{text}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path)
