"""``[ha]`` settings: defaults, durations, and the timing the elector relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.errors import ConfigError
from lifeline.settings import load_settings


def test_ha_defaults_and_example(tmp_path: Path) -> None:
    """Off by default; 8 s lease, 2 s renewals, 0.5 s polls (elected within 8.5 s of the
    last renewal); the example file agrees."""
    example = load_settings(Path(__file__).parents[2] / "lifeline.example.toml").ha
    assert not example.enabled
    assert (example.lease.ns, example.renew_interval.ns, example.poll_interval.ns) == (
        8_000_000_000, 2_000_000_000, 500_000_000)
    default = load_settings(None, run_dir=tmp_path).ha
    assert default.lease.ns + default.poll_interval.ns <= 10_000_000_000
    assert (example.group, example.node_id) == ("lifeline", "")


@pytest.mark.parametrize("text", [
    '[ha]\nlease = "5s"\nrenew_interval = "3s"\n',  # no room for two renewals
    '[ha]\nlease = "5s"\npoll_interval = "6s"\n',
    '[ha]\nlease = "0s"\n',
    '[ha]\nlease = "soon"\n',
    '[ha]\ngroup = ""\n',
    '[ha]\nadvertise_url = "10.0.0.1:8080"\n',  # no scheme: forwards would go nowhere
    '[ha]\nadvertise_url = "ftp://a"\n',
    '[ha]\nstate_interval = "0s"\n',
    '[ha]\nstate_interval = "2h"\n',
    '[ha]\ndedup_keys = -1\n',
    '[ha]\ndedup_keys = 5000000\n',
])
def test_ha_timing_is_checked(tmp_path: Path, text: str) -> None:
    """A lease that cannot survive one lost renewal, or a bad duration, is refused."""
    path = tmp_path / "lifeline.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="ha"):
        load_settings(path)


def test_new_ha_settings_defaults_and_example(tmp_path: Path) -> None:
    example = load_settings(Path(__file__).parents[2] / "lifeline.example.toml").ha
    default = load_settings(None, run_dir=tmp_path).ha
    for ha in (example, default):
        assert (ha.advertise_url, ha.state_interval.ns, ha.dedup_keys) == (
            "", 5_000_000_000, 20_000)
    path = tmp_path / "lifeline.toml"
    path.write_text('[ha]\nadvertise_url = "https://a.internal:8443/"\n', encoding="utf-8")
    assert load_settings(path).ha.advertise_url == "https://a.internal:8443"


@pytest.mark.parametrize(("text", "what"), [
    ('[ha]\nenabled = true\n[mqtt]\nclean_start = true\n', "persistent MQTT session"),
    ('[ha]\nenabled = true\n[mqtt]\nsession_expiry = "0s"\n', "persistent MQTT session"),
    ('[ha]\nenabled = true\n[mqtt]\nshared_group = "workers"\n', "shared_group"),
    ('[ha]\nenabled = true\n[mqtt]\nqos = 0\n', "qos"),
])
def test_ha_refuses_an_mqtt_session_a_standby_could_not_take_over(
        tmp_path: Path, text: str, what: str) -> None:
    path = tmp_path / "lifeline.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=what):
        load_settings(path)
    path.write_text(text.replace("enabled = true", "enabled = false"), encoding="utf-8")
    load_settings(path)  # one node may choose these


def test_ha_on_sqlite_is_a_warning(tmp_path: Path) -> None:
    from lifeline.settings import risky_settings

    path = tmp_path / "lifeline.toml"
    path.write_text("[ha]\nenabled = true\n", encoding="utf-8")
    assert any("SQLite" in w for w in risky_settings(load_settings(path, run_dir=tmp_path)))
    path.write_text('[ha]\nenabled = true\n[database]\nurl = "postgresql+psycopg://h/db"\n',
                    encoding="utf-8")
    assert not any("SQLite" in w for w in risky_settings(load_settings(path)))
