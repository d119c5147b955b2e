"""Scoring against ground truth, on hand-made detections and cases."""

from __future__ import annotations

from simulators.scenario import Truth
from simulators.score import GRACE_S, CaseRecord, Detection, detector_report, score

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


# ---- per detector: precision / recall / F1 / delay over labelled windows -----------------

W1 = Truth(id="w1", kind="network_leak", category="process", devices=("a",), grid="G",
           dma="D1", start_s=1000.0, end_s=2000.0, reference_s=1000.0, expect_case=True)
W2 = Truth(id="w2", kind="cavitation", category="process", devices=("b",), grid="G",
           dma="D2", start_s=5000.0, end_s=6000.0, reference_s=5000.0, expect_case=True)
W3 = Truth(id="w3", kind="sensor_drift", category="sensor", devices=("c",), grid="G",
           dma="D3", start_s=8000.0, end_s=9000.0, reference_s=8000.0, expect_case=False)
COMMS = Truth(id="w4", kind="dropout", category="comms", devices=("z",), grid="G", dma="D9",
              start_s=0.0, end_s=9000.0, reference_s=0.0, expect_case=False)


def alarm(rule: str, device: str, ts: float) -> Detection:
    return Detection(device, rule, ts, "G", "D0", True)


def test_detector_scores_by_hand() -> None:
    detections = [
        alarm("r1", "a", 1200.0),  # TP of w1, 200 s after its start
        alarm("r1", "a", 1500.0),  # same window again: neither a second TP nor an FP
        alarm("r1", "a", 2050.0),  # after w1's end but within the tolerance: still w1
        alarm("r1", "b", 4000.0),  # before w2 starts: FP
        alarm("r1", "z", 5500.0),  # a device of no window (a comms fault is none): FP
        alarm("r2", "b", 5100.0),  # TP of w2 after 100 s
        alarm("r2", "c", 8600.0),  # TP of w3 (a sensor fault is a window) after 600 s
        alarm("r3", "c", 8700.0),
        Detection("c", "r4", 8100.0, "G", "D3", False),  # sensor-health finding: no detector
    ]
    kinds = {"r1": "zscore", "r2": "seasonal", "r3": "seasonal", "r5": "changepoint"}
    rep = detector_report([W1, W2, W3, COMMS], detections, device_days=10.0, rule_kinds=kinds,
                          detectors=["r1", "r2", "r3", "r5"], tolerance_s=100.0)
    assert rep["windows"] == 3
    r1 = rep["by_rule"]["r1"]
    assert (r1["alarms"], r1["tp"], r1["fp"], r1["fn"]) == (5, 1, 2, 2)
    assert (r1["precision"], r1["recall"], r1["f1"]) == (0.333, 0.333, 0.333)
    assert r1["delay_s"] == {"mean": 200.0, "median": 200.0, "max": 200.0}
    assert r1["false_alarms_per_1000_device_days"] == 200.0  # 2 FP in 10 device-days
    r2 = rep["by_rule"]["r2"]
    assert (r2["tp"], r2["fp"], r2["fn"]) == (2, 0, 1)
    assert (r2["precision"], r2["recall"], r2["f1"]) == (1.0, 0.667, 0.8)
    assert r2["delay_s"] == {"mean": 350.0, "median": 350.0, "max": 600.0}
    assert r2["delays_s"] == {"w2": 100.0, "w3": 600.0}
    # a listed rule that never fired: no precision, nothing recalled
    r5 = rep["by_rule"]["r5"]
    assert (r5["alarms"], r5["precision"], r5["recall"], r5["f1"]) == (0, None, 0.0, 0.0)
    assert "r4" not in rep["by_rule"]
    # per kind: the union of its rules' alarms (w3's delay from the kind's first alarm)
    seasonal = rep["by_kind"]["seasonal"]
    assert (seasonal["alarms"], seasonal["tp"], seasonal["fp"], seasonal["fn"]) == (3, 2, 0, 1)
    assert seasonal["delays_s"] == {"w2": 100.0, "w3": 600.0}
    assert rep["by_kind"]["zscore"]["f1"] == 0.333


def test_detectors_in_the_scenario_report() -> None:
    report = score([W1], [alarm("r1", "a", 1000.0 + 2000.0)], [], device_count=10,
                   duration_s=86_400.0, scenario="s", rule_kinds={"r1": "zscore"},
                   detectors=["r1"])
    r1 = report["detectors"]["by_rule"]["r1"]  # default tolerance: GRACE_S after the end
    assert (r1["kind"], r1["tp"], r1["fp"], r1["delay_s"]["max"]) == ("zscore", 1, 0, 2000.0)
    late = score([W1], [alarm("r1", "a", 2000.0 + GRACE_S + 1)], [], device_count=10,
                 duration_s=86_400.0, scenario="s", detectors=["r1"])
    assert late["detectors"]["by_rule"]["r1"]["fp"] == 1
    assert late["detectors"]["by_rule"]["r1"]["recall"] == 0.0
