"""``lifeline bench latency --quick``: every probe raises exactly one ``alert.firing``.

Checks the benchmark's bookkeeping end to end (its own Mosquitto, InfluxDB, receiver and
``lifeline serve``); the latency figures themselves are not asserted.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.support import clean_env

pytestmark = pytest.mark.e2e


def test_quick_latency_bench_gets_one_alert_firing_per_probe() -> None:
    proc = subprocess.run([sys.executable, "-m", "lifeline", "bench", "latency", "--quick",
                           "--json"], env=clean_env(), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = orjson.loads(proc.stdout)
    probes = result["settings"]["probes_per_phase"]
    assert probes == 5
    for name in ("idle", "load"):
        phase = result["phases"][name]
        assert phase["lost"] == []
        assert phase["full_path"]["n"] == probes
        assert phase["mqtt_round_trip"]["n"] == probes
        assert phase["http_post"]["n"] == probes
    assert result["alert_firing_per_probe"] == {"exactly_one": 2 * probes, "none": 0, "more": 0}
    assert result["webhook_duplicates"] == 0 and result["bad_signatures"] == 0
    assert result["targets_met"]["every_probe_one_alert_firing"] is True
    assert result["phases"]["load"]["achieved_readings_per_s"] > 0
    assert result["serve_exit_code"] == 0
    # the probes and the load were stored as well
    assert result["readings_stored"] > 2 * probes
