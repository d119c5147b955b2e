"""``[ha]`` settings: defaults, durations, and the timing the elector relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifeline.errors import ConfigError
from lifeline.settings import load_settings


def test_ha_defaults_and_example(tmp_path: Path) -> None:
    """Off by default; 9 s lease, 2 s renewals, 1 s polls (a takeover within 10 s of the
    last renewal); the example file agrees."""
    example = load_settings(Path(__file__).parents[2] / "lifeline.example.toml").ha
    assert not example.enabled
    assert (example.lease.ns, example.renew_interval.ns, example.poll_interval.ns) == (
        9_000_000_000, 2_000_000_000, 1_000_000_000)
    default = load_settings(None, run_dir=tmp_path).ha
    assert default.lease.ns + default.poll_interval.ns <= 10_000_000_000
    assert (example.group, example.node_id) == ("lifeline", "")


@pytest.mark.parametrize("text", [
    '[ha]\nlease = "5s"\nrenew_interval = "3s"\n',  # no room for two renewals
    '[ha]\nlease = "5s"\npoll_interval = "6s"\n',
    '[ha]\nlease = "0s"\n',
    '[ha]\nlease = "soon"\n',
    '[ha]\ngroup = ""\n',
])
def test_ha_timing_is_checked(tmp_path: Path, text: str) -> None:
    """A lease that cannot survive one lost renewal, or a bad duration, is refused."""
    path = tmp_path / "lifeline.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="ha"):
        load_settings(path)
