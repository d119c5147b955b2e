"""Scoring against ground truth, on hand-made detections and cases."""

from __future__ import annotations

from simulators.scenario import Truth
from simulators.score import CaseRecord, Detection, score

LEAK = Truth(id="s#1-gas_leak", kind="gas_leak", category="process", devices=("ga-1", "ga-2"),
             grid="G1", dma="D1", start_s=1000.0, end_s=5000.0, reference_s=2500.0,
             expect_case=True)
BURST = Truth(id="s#2-main_burst", kind="main_burst", category="process",
              devices=("wp-1", "wf-1"), grid="G2", dma="D2", start_s=3000.0, end_s=9000.0,
              reference_s=3000.0, expect_case=True)
STUCK = Truth(id="s#3-stuck_sensor", kind="stuck_sensor", category="sensor", devices=("wp-9",),
              grid="G3", dma="D3", start_s=0.0, end_s=9000.0, reference_s=0.0, expect_case=False)


def det(device: str, ts: float, grid: str = "G", dma: str = "D", process: bool = True
        ) -> Detection:
    return Detection(device, "r", ts, grid, dma, process)


def test_detection_times_cases_and_false_alarms_by_hand() -> None:
    detections = [
        det("ga-2", 2540.0), det("ga-1", 2600.0),  # leak: 40 s after crossing 25 %LEL
        det("wp-7", 3090.0, dma="D2"),  # another sensor of the burst's DMA: 90 s
        det("ga-9", 100.0),  # nothing happened there: a false alarm
        det("wp-9", 500.0, process=False),  # a sensor-health finding is no false alarm
    ]
    cases = [
        CaseRecord(1, 2550.0, ("ga-2", "ga-1"), "G1", "D1", True),
        CaseRecord(2, 3100.0, ("wp-7",), "G2", "D2", True),
        CaseRecord(3, 3200.0, ("wp-1",), "G2", "D2", True),  # a second case for one burst
        CaseRecord(4, 700.0, ("wp-9",), "G3", "D3", True),  # a stuck sensor made a case
    ]
    report = score([LEAK, BURST, STUCK], detections, cases, device_count=1000,
                   duration_s=86_400.0, scenario="s")
    leak, burst, stuck = report["incidents"]
    assert (leak["detected"], leak["time_to_detect_s"]) == (True, 40.0)
    assert leak["time_to_case_s"] == 50.0
    assert leak["cases"] == 1 and leak["met"]
    assert (burst["time_to_detect_s"], burst["cases"], burst["met"]) == (90.0, 2, False)
    assert stuck["cases"] == 1 and not stuck["met"]
    assert report["sensor_faults_as_process_cases"] == 1
    assert report["false_cases"] == 1  # case 4: matches no process incident
    assert report["false_cases_per_1000_device_days"] == 1.0
    assert report["false_alarms"] == 1  # ga-9
    assert report["targets_met"] is False


def test_missed_and_late_detections_fail_their_targets() -> None:
    late = score([LEAK], [det("ga-1", 2500.0 + 61.0)], [CaseRecord(1, 2600.0, ("ga-1",), "G1",
                                                                      "D1", True)],
                 device_count=10, duration_s=3600.0, scenario="s")
    assert late["incidents"][0]["time_to_detect_s"] == 61.0 and not late["incidents"][0]["met"]
    missed = score([LEAK], [], [], device_count=10, duration_s=3600.0, scenario="s")
    assert missed["incidents"][0]["detected"] is False and missed["targets_met"] is False
    quiet = score([], [], [], device_count=1000, duration_s=86_400.0, scenario="q")
    assert quiet["targets_met"] is True and quiet["false_cases"] == 0


def test_a_maintenance_case_for_a_real_device_fault_is_not_a_false_case() -> None:
    offline = Truth(id="s#1-offline", kind="offline", category="comms", devices=("ga-5",),
                    grid="G1", dma="D1", start_s=1000.0, end_s=4600.0, reference_s=1000.0,
                    expect_case=False)
    cases = [
        CaseRecord(1, 1300.0, ("ga-5",), "G1", "D1", False),  # ga-5 offline: a work order
        CaseRecord(2, 1300.0, ("ga-6",), "G1", "D1", False),  # ga-6 was never offline
    ]
    report = score([offline], [], cases, device_count=1000, duration_s=86_400.0,
                   scenario="s")
    (inc,) = report["incidents"]
    assert (inc["cases"], inc["health_cases"], inc["met"]) == (0, 1, True)
    assert report["false_cases"] == 1 and report["sensor_faults_as_process_cases"] == 0
    assert report["targets_met"] is False  # 1 false case per 1,000 device-days is too many
