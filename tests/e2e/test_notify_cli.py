"""``lifeline notify test CHANNEL`` through the CLI against a local stand-in of the
platform (a real HTTP server checking DingTalk's signature); ``config show`` masks the
channel's URL and secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.integration.notify_platforms import Platform, serve, stop
from tests.support import clean_env

LIFELINE = [sys.executable, "-m", "lifeline"]
SECRET = "SEC-cli-secret-0123456789"


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIFELINE, "--config", str(config), *args], capture_output=True,
                          text=True, timeout=60, env=clean_env(), check=False)


def test_notify_test_sends_a_signed_sample(tmp_path: Path) -> None:
    platform = serve(Platform("dingtalk", secret=SECRET, keyword="告警"))
    try:
        config = tmp_path / "lifeline.toml"
        config.write_text(f"""
run_dir = "{tmp_path}"
[[notify.channels]]
name = "duty-ding"
type = "dingtalk"
url = "{platform.url}"
secret = "{SECRET}"
keyword = "告警"
""", encoding="utf-8")
        ok = run(config, "notify", "test", "duty-ding")
        assert ok.returncode == 0, ok.stderr
        assert "sent a test message to duty-ding" in ok.stdout
        (got,) = platform.accepted
        assert "测试告警" in got.json()["markdown"]["text"]
        missing = run(config, "notify", "test", "nope")
        assert missing.returncode == 1 and "no channel 'nope'" in missing.stderr
        shown = run(config, "config", "check")
        assert shown.returncode == 0, shown.stderr
        assert SECRET not in shown.stdout and "dt-123" not in shown.stdout
    finally:
        stop(platform)


def test_notify_test_reports_a_refusal(tmp_path: Path) -> None:
    platform = serve(Platform("dingtalk", secret=SECRET))
    try:
        config = tmp_path / "lifeline.toml"
        config.write_text(f"""
run_dir = "{tmp_path}"
[[notify.channels]]
name = "duty-ding"
type = "dingtalk"
url = "{platform.url}"
secret = "wrong-secret-0123456789"
""", encoding="utf-8")
        bad = run(config, "notify", "test", "duty-ding")
        assert bad.returncode == 1 and "310000" in bad.stderr and "permanent" in bad.stderr
        assert "dt-123" not in bad.stderr  # the robot's token is not shown
    finally:
        stop(platform)
