"""State a leader leaves for the next one: rule-state documents and de-duplication keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.model import Device
from devices.series import SeriesTable
from ingest.decode import Deduplicator, keys_from_json, keys_to_json
from rules.engine import RuleEngine
from rules.errors import RulesError
from rules.kinds import ThresholdRule
from tests.unit.test_rules_engine import feed

scalars = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=8), st.booleans(),
                    st.none(), st.floats(allow_nan=False, allow_infinity=False))
seq_keys = st.tuples(st.text(min_size=1, max_size=12),
                     st.one_of(st.integers(-(2**62), 2**62), st.text(max_size=8)),
                     st.one_of(st.none(), st.integers(0, 2**62)))
value_keys = st.tuples(st.text(min_size=1, max_size=12), st.integers(0, 2**62),
                       st.lists(st.tuples(st.text(max_size=6), scalars), max_size=4)
                       .map(tuple))


@given(st.lists(st.one_of(seq_keys, value_keys), max_size=40))
def test_keys_survive_the_database_document(keys: list[object]) -> None:
    again = keys_from_json(keys_to_json(keys))
    assert again == keys
    dedup = Deduplicator(1000)
    dedup.remember(again)
    assert all(dedup.seen(k) for k in keys)  # a resend of any of them is a duplicate


@pytest.mark.parametrize("document", [
    b"", b"not json", b"{}", b'"x"', b"[1, 2]", b'[["d"]]', b'[[1, 2, 3]]',
    b'[["d", 1.5, 3]]', b'[["d", 1, "x"]]', b'[["d", 1, [[1]]]]', b'[["d", 1, [{"a": 1}]]]',
    b'[["d", [1], null]]', b"[" * 5000,
])
def test_hostile_key_documents_give_only_wellformed_keys(document: bytes) -> None:
    keys = keys_from_json(document)
    for key in keys:
        hash(key)  # usable as de-duplication keys
    assert len(keys) <= 1


def test_a_partly_broken_document_keeps_the_good_keys() -> None:
    doc = b'[["d1", 5, 1000], "junk", ["d2", 1000, [["lel", 3.5]]], ["d3", {"x": 1}, 1]]'
    assert keys_from_json(doc) == [("d1", 5, 1000), ("d2", 1000, (("lel", 3.5),))]


def test_recent_keys_are_the_newest_in_order() -> None:
    dedup = Deduplicator(10)  # generations of 5
    for i in range(13):
        dedup.seen(("d", i, None))
    assert dedup.recent(4) == [("d", i, None) for i in (9, 10, 11, 12)]
    assert dedup.recent(7) == [("d", i, None) for i in range(6, 13)]
    assert dedup.recent(100) == [("d", i, None) for i in range(5, 13)]  # what it holds
    assert dedup.recent(0) == []


def test_rule_state_document_round_trip_and_garbage() -> None:
    table = SeriesTable()
    dev = Device("a", "gas_alarm")
    sid = table.id_for(dev, "lel")
    rule = ThresholdRule(id="t", metric="lel", above=25.0)
    engine = RuleEngine([rule], table)
    feed(engine, sid, [30.0])
    document = engine.dump_state()
    restored = RuleEngine([rule], SeriesTable())
    assert restored.load_state(document, {"a": dev}.get) == 1
    assert restored.describe()[0]["firing"] == 1
    for bad in (b"", b"PK\x03\x04garbage", document[: len(document) // 2]):
        with pytest.raises(RulesError, match="cannot read rule state"):
            restored.load_state(bad, {"a": dev}.get)
