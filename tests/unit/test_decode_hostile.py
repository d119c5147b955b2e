"""The decoder under the hostile-input campaign of ``lifeline bench fuzz`` (small counts
here; ``lifeline bench fuzz --target decoder --examples N`` runs a bigger one)."""

from __future__ import annotations

from bench.fuzz import decoder_campaign

STRATEGIES = {"arbitrary_bytes", "arbitrary_json", "deeply_nested_json", "huge_arrays",
              "huge_numbers", "unicode_ids", "topic_injection", "readings_with_repeats"}


def test_every_hostile_message_is_stored_a_duplicate_or_dead_lettered() -> None:
    result = decoder_campaign(examples=25, seed=1)
    strategies = result["strategies"]
    assert set(strategies) == STRATEGIES
    failures = {k: v["failure_examples"] for k, v in strategies.items() if v.get("failures")}
    assert failures == {}
    assert result["failures"] == 0
    assert all(s["inputs"] >= 10 for s in strategies.values()), strategies
    # the campaign really reaches the outcomes it claims to check
    assert strategies["topic_injection"].get("reason:bad_topic", 0) > 0
    assert strategies["arbitrary_bytes"].get("reason:not_json", 0) > 0
    assert strategies["readings_with_repeats"].get("stored", 0) > 0
    assert strategies["readings_with_repeats"].get("duplicates", 0) > 0
    assert result["dead_letters_stored"] > 100


def test_mqtt_payload_limit_boundary() -> None:
    from devices.catalogue import Catalogue
    from devices.model import Device
    from devices.registry import MemoryRegistry
    from devices.series import SeriesTable
    from devices.topics import TopicScheme
    from ingest.batch import RawMessage
    from ingest.deadletter import Reason
    from ingest.decode import DecodeLimits, Decoder

    limit = 1024
    decoder = Decoder(TopicScheme("lifeline"), MemoryRegistry([Device("gas-1", "gas_alarm")]),
                      Catalogue.builtin(), SeriesTable(), DecodeLimits(max_payload_bytes=limit))
    head, tail = b'{"values": {"lel": 1.0}, "pad": "', b'"}'
    at = head + b"x" * (limit - len(head) - len(tail)) + tail
    assert len(at) == limit
    ok = decoder.decode([RawMessage("lifeline/gas-1/telemetry", at, 1)])
    assert ok.readings == 1 and ok.dead == []
    over = decoder.decode([RawMessage("lifeline/gas-1/telemetry", at + b" ", 1)])
    assert [d.reason for d in over.dead] == [Reason.OVERSIZED]
    assert over.dead[0].detail == f"{limit + 1} bytes > limit {limit}"


def test_every_huge_number_in_every_place() -> None:
    """Found by the campaign: ``"ts": -999…`` (400 digits) made ``math.isfinite`` raise
    OverflowError inside the decoder (caught as a "decoder error" dead letter)."""
    import time

    from bench.fuzz import HUGE_LITERALS, HUGE_PLACES, _decoder, huge_doc
    from ingest.batch import RawMessage

    decoder = _decoder()
    for literal in HUGE_LITERALS:
        for place in HUGE_PLACES:
            payload = huge_doc(literal, place)
            res = decoder.decode([RawMessage("lifeline/gas-1/telemetry", payload,
                                             time.time_ns())])
            assert res.readings + res.duplicates + len(res.dead) >= 1, payload[:60]
            assert not any(d.detail.startswith("decoder error") for d in res.dead), (
                payload[:60], res.dead[0].detail)
