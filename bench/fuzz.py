"""Hostile-input campaigns with counts: the decoder and the HTTP API (schemathesis).

* ``decoder``: hypothesis strategies (arbitrary bytes, deeply nested JSON, huge
  arrays, huge numbers, unicode ids and metric names, topic injection with ``+``,
  ``#``, ``..``, ``/`` and NUL, valid readings with repeats) through the real
  :class:`~ingest.decode.Decoder`; dead letters are stored in a SQLite
  :class:`~ingest.deadletter.DeadLetterStore`. A failure is a raise, a
  "decoder error" dead letter, a non-finite stored value, a message neither
  stored, counted as a duplicate nor dead-lettered, or a dead letter the store
  refuses.
* ``api``: every operation of the app's OpenAPI schema, positive and negative
  schemathesis cases with an admin token, sent over HTTP (httpx) to the app
  served by uvicorn on a free loopback port with a SQLite database and the
  built-in rules. A failure is any schemathesis check failing (5xx, undocumented
  status, response not matching its schema, schema-invalid data accepted,
  missing auth not refused, …), except ``positive_data_acceptance``: a
  schema-valid request refused with a documented 422 (an unknown device type,
  say) is counted as ``schema_looser_than_validation``, not as a failure; and
  ``ignored_auth``, whose probes go through schemathesis' ``requests`` transport,
  broken by the urllib3-future that grafana-client's niquests installs (every route
  without a token, with a bad one and with a viewer token is covered by
  ``tests/unit/test_api_roles.py``).

``lifeline bench fuzz [--target decoder|api|all] [--examples N] [--json]``. Needs the
``dev`` extra (hypothesis, schemathesis).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from devices.catalogue import Catalogue
from devices.model import Device
from devices.registry import MemoryRegistry
from devices.series import SeriesTable
from devices.topics import TopicScheme
from ingest.batch import RawMessage
from ingest.deadletter import DeadLetterStore
from ingest.decode import Decoder
from lifeline.db import open_database

MAX_EXAMPLES_SHOWN = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench fuzz``."""
    p.add_argument("--target", choices=["decoder", "api", "all"], default="all")
    p.add_argument("--examples", type=int, default=500,
                   help="inputs per decoder strategy, and per API operation and mode")
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen campaigns; every count is in the result."""
    result: dict[str, Any] = {"benchmark": "fuzz", "examples": args.examples}
    if args.target in ("decoder", "all"):
        result["decoder"] = decoder_campaign(args.examples, args.seed)
    if args.target in ("api", "all"):
        result["api"] = api_campaign(args.examples, args.seed)
    result["failures"] = sum(result[k]["failures"] for k in ("decoder", "api") if k in result)
    return result


# --------------------------------------------------------------------------- decoder

PREFIX = "lifeline"
DEVICES = ("gas-1", "wp-1")
HUGE_LITERALS = [
    b"1e400", b"-1e400", b"1" * 5000, b"-" + b"9" * 400, str(2**70).encode(),
    str(-(2**70)).encode(), str(2**64).encode(), b"1.7976931348623157e309",
    b"0." + b"0" * 400 + b"1", b"NaN", b"-Infinity"]
HUGE_PLACES = ("value", "ts", "seq")


def huge_doc(literal: bytes, where: str) -> bytes:
    """A reading with ``literal`` (a number past float or int64 range) as value, ts or seq."""
    if where == "value":
        return b'{"values": {"lel": ' + literal + b"}}"
    if where == "ts":
        return b'{"ts": ' + literal + b', "values": {"lel": 1}}'
    return b'{"seq": ' + literal + b', "ts": 1, "values": {"lel": 1}}'


def _strategies() -> dict[str, Any]:
    from hypothesis import strategies as st  # noqa: PLC0415 - dev extra

    now_ms = time.time_ns() // 1_000_000
    metric = st.sampled_from(["lel", "co_ppm", "battery", "rssi", "pressure", "x"])
    unicode_text = st.text(min_size=1, max_size=24)
    number = (st.integers() | st.floats() | st.sampled_from([2**70, -(2**70), 2**63, 10**30])
              | st.booleans() | st.none())
    reading = st.fixed_dictionaries(
        {"values": st.dictionaries(metric | unicode_text, number, max_size=4)},
        optional={"ts": st.integers(now_ms - 10_000, now_ms + 10_000) | st.integers()
                  | st.floats() | st.text(max_size=30),
                  "seq": st.integers(0, 50) | st.text(max_size=4)})

    def dumps(doc: Any) -> bytes:
        try:
            return orjson.dumps(doc)
        except TypeError:  # ints past 64 bits: orjson refuses them, the stdlib does not
            import json  # noqa: PLC0415

            return json.dumps(doc).encode()

    telemetry = st.sampled_from([f"{PREFIX}/{d}/telemetry" for d in DEVICES])

    def nested(depth: int, opener: str) -> bytes:
        inner = b'{"values": {"lel": 1.0}}'
        if opener == "[":
            return b"[" * depth + inner + b"]" * depth
        return b'{"values": ' * depth + inner + b"}" * depth

    huge_literals = st.sampled_from(HUGE_LITERALS)

    segment = st.sampled_from(["+", "#", "..", ".", "", "\x00", "lifeline", "gas-1", "wp-1",
                               "telemetry", "event", "status", "$SYS", " ", "gas-1\x00",
                               "ｇａｓ-1", "газ", "燃气-1", "gas-1/../wp-1"]) | unicode_text
    topics = st.lists(segment, min_size=1, max_size=6).map("/".join)
    valid_payload = reading.map(dumps)
    return {
        "arbitrary_bytes": st.tuples(telemetry, st.binary(max_size=2048)),
        "arbitrary_json": st.tuples(
            telemetry, st.recursive(
                st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                    max_size=4),
                max_leaves=30).map(dumps)),
        "deeply_nested_json": st.tuples(
            telemetry, st.builds(nested, st.integers(1, 200_000), st.sampled_from("[{"))),
        "huge_arrays": st.tuples(
            telemetry,
            st.integers(1, 30_000).map(lambda n: b"[" + b",".join(
                [b'{"values": {"lel": 1.0}}'] * n) + b"]")
            | st.integers(1, 200_000).map(lambda n: b'{"values": {"lel": ['
                                          + b",".join([b"1"] * n) + b"]}}")),
        "huge_numbers": st.tuples(
            telemetry, st.builds(huge_doc, huge_literals, st.sampled_from(HUGE_PLACES))),
        "unicode_ids": st.tuples(
            st.builds(lambda d, k: f"{PREFIX}/{d}/{k}", unicode_text,
                      st.sampled_from(["telemetry", "event", "status"])),
            valid_payload
            | st.builds(lambda m: dumps({"values": {m: 1.0}, "units": {m: m}}), unicode_text)),
        "topic_injection": st.tuples(topics, valid_payload),
        "readings_with_repeats": st.tuples(telemetry, valid_payload),
    }


def _decoder() -> Decoder:
    registry = MemoryRegistry([Device("gas-1", "gas_alarm", grid="G1"),
                               Device("wp-1", "water_pressure")])
    return Decoder(TopicScheme(PREFIX), registry, Catalogue.builtin(), SeriesTable())


def decoder_campaign(examples: int, seed: int | None = None) -> dict[str, Any]:
    """Every strategy ``examples`` times through one decoder; per-strategy counts."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings  # noqa: PLC0415
    from hypothesis import seed as hseed  # noqa: PLC0415

    tmp = tempfile.TemporaryDirectory(prefix="lifeline-fuzz-")
    engine = open_database(f"sqlite:///{Path(tmp.name) / 'dlq.sqlite'}")
    store = DeadLetterStore(engine)
    out: dict[str, Any] = {"strategies": {}}
    started = time.perf_counter()
    for name, strategy in _strategies().items():
        counts: Counter[str] = Counter()
        failures: list[str] = []

        check = _decoder_check(name, _decoder(), counts, failures, store)
        test: Callable[[], None] = settings(
            max_examples=examples, deadline=None, database=None, verbosity=Verbosity.quiet,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck))(given(args=strategy)(check))
        if seed is not None:
            test = hseed(seed)(test)
        test()
        out["strategies"][name] = {**dict(counts), "failure_examples": failures}
    engine.dispose()
    tmp.cleanup()
    strategies = out["strategies"].values()
    out["inputs"] = sum(s.get("inputs", 0) for s in strategies)
    out["failures"] = sum(s.get("failures", 0) for s in strategies)
    out["dead_letters_stored"] = sum(s.get("dead_lettered", 0) for s in strategies)
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def _decoder_check(name: str, decoder: Decoder, counts: Counter[str], failures: list[str],
                   store: DeadLetterStore) -> Callable[[tuple[str, bytes]], None]:
    """The per-input body: decode, judge, count (repeats re-send earlier messages)."""
    sent: list[RawMessage] = []

    def one(args: tuple[str, bytes]) -> None:
        topic, payload = args
        msg = RawMessage(topic, payload, time.time_ns())
        counts["inputs"] += 1
        problem = _judge(decoder, msg, counts, store)
        if problem is None and name == "readings_with_repeats":
            sent.append(msg)
            if len(sent) % 3 == 0:  # a QoS 1 redelivery of an earlier message
                problem = _judge(decoder, sent[len(sent) // 2], counts, store)
        if problem is not None:
            counts["failures"] += 1
            if len(failures) < MAX_EXAMPLES_SHOWN:
                failures.append(f"{problem}: topic={topic[:80]!r} payload={payload[:120]!r}")
    return one


def _judge(decoder: Decoder, msg: RawMessage, counts: Counter[str],
           store: DeadLetterStore) -> str | None:
    """Decode one message; None when it is accounted for, else what went wrong."""
    try:
        res = decoder.decode([msg])
    except Exception as exc:
        return f"decoder raised {type(exc).__name__}: {exc}"
    if any(d.detail.startswith("decoder error") for d in res.dead):
        return f"decoder bug caught as dead letter: {res.dead[0].detail[:200]}"
    if not all(math.isfinite(v) for v in res.batch.value.tolist()):
        return "non-finite value stored"
    if len(res.dead) > 1:
        return f"{len(res.dead)} dead letters for one message"
    stored = res.readings + len(res.events) + len(res.statuses)
    if stored == 0 and res.duplicates == 0 and not res.dead:
        return "neither stored, duplicate nor dead-lettered"
    try:
        store.add_many(res.dead)
    except Exception as exc:
        return f"dead-letter store refused: {type(exc).__name__}: {str(exc)[:200]}"
    counts["stored"] += stored > 0
    counts["duplicates"] += res.duplicates > 0
    for dead in res.dead:
        counts["dead_lettered"] += 1
        counts[f"reason:{dead.reason.value}"] += 1
    return None


# --------------------------------------------------------------------------- API


def api_campaign(examples: int, seed: int | None = None) -> dict[str, Any]:
    """Every operation, positive and negative, ``examples`` cases each, against uvicorn."""
    import httpx  # noqa: PLC0415
    import schemathesis  # noqa: PLC0415
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings  # noqa: PLC0415
    from hypothesis import seed as hseed  # noqa: PLC0415
    from schemathesis import GenerationMode  # noqa: PLC0415
    from schemathesis.core.failures import Failure, FailureGroup  # noqa: PLC0415
    from schemathesis.core.result import Ok  # noqa: PLC0415
    from schemathesis.specs.openapi.checks import (  # noqa: PLC0415
        ignored_auth,
        positive_data_acceptance,
    )

    from lifeline.app import ApiServer, create_app  # noqa: PLC0415
    from lifeline.auth import new_token, token_digest  # noqa: PLC0415
    from lifeline.settings import load_settings  # noqa: PLC0415
    from rules.engine import RuleEngine  # noqa: PLC0415
    from rules.loader import load_rules  # noqa: PLC0415

    tmp = tempfile.TemporaryDirectory(prefix="lifeline-fuzz-")
    token = new_token()
    settings_ = load_settings(None, run_dir=Path(tmp.name), api={"tokens": [
        {"name": "fuzz", "role": "admin", "sha256": token_digest(token)}]})
    engine = open_database(settings_.database_url)
    rules = load_rules(settings_.rules.paths)
    rule_engine = RuleEngine(rules, SeriesTable(), timezone=settings_.rules.timezone)
    app = create_app(settings_, engine, {"db": lambda: (True, "ok")}, rule_engine=rule_engine,
                     rules_reload=lambda: rule_engine.reload(load_rules(settings_.rules.paths)))
    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    deadline = time.monotonic() + 10
    while server.port is None and time.monotonic() < deadline:
        time.sleep(0.02)
    base = f"http://127.0.0.1:{server.port}"
    headers = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_dict(app.openapi())
    client = httpx.Client(timeout=30)

    operations: dict[str, dict[str, Any]] = {}
    total: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        for result in schema.get_all_operations():
            if not isinstance(result, Ok):
                total["invalid_operations"] += 1
                continue
            operation = result.ok()
            entry: dict[str, Any] = {"inputs": 0, "statuses": Counter(), "failures": 0,
                                     "schema_looser_than_validation": 0, "examples": []}
            operations[operation.label] = entry
            one = _api_check(entry, client, base, headers, Failure, FailureGroup,
                             positive_data_acceptance, ignored_auth)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                test: Callable[[], None] = settings(
                    max_examples=examples, deadline=None, database=None, verbosity=Verbosity.quiet,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck))(
                        given(case=operation.as_strategy(generation_mode=mode))(one))
                if seed is not None:
                    test = hseed(seed)(test)
                try:
                    test()
                except Exception as exc:  # hypothesis: e.g. no negative case exists
                    if type(exc).__name__ != "Unsatisfiable":
                        raise
            entry["statuses"] = dict(entry["statuses"])
            for key in ("inputs", "failures", "schema_looser_than_validation"):
                total[key] += entry[key]
    finally:
        client.close()
        server.stop()
        engine.dispose()
        tmp.cleanup()
    return {"operations_tested": len(operations), "inputs": total["inputs"],
            "failures": total["failures"] + total["invalid_operations"],
            "schema_looser_than_validation": total["schema_looser_than_validation"],
            "seconds": round(time.perf_counter() - started, 2), "operations": operations}


def _api_check(entry: dict[str, Any], client: Any, base: str, headers: dict[str, str],
               failure: Any, failure_group: Any, looser: Any,
               probe: Any) -> Callable[[Any], None]:
    """The per-case body: send, count the status, run the checks and count failures."""
    def one(case: Any) -> None:
        entry["inputs"] += 1
        try:
            response = _send(client, case, base, headers)
        except Exception as exc:  # the server dropped the connection: a failure too
            entry["failures"] += 1
            entry["statuses"]["connection_error"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES_SHOWN:
                entry["examples"].append(f"{type(exc).__name__}: {exc} :: "
                                         f"{case.as_curl_command(base_url=base)[:400]}")
            return
        entry["statuses"][str(response.status_code)] += 1
        try:
            case.validate_response(response, headers=headers, excluded_checks=[looser, probe],
                                   transport_kwargs={"base_url": base})
        except (failure, failure_group) as exc:
            entry["failures"] += 1
            if len(entry["examples"]) < MAX_EXAMPLES_SHOWN:
                entry["examples"].append(_describe(exc, case, base))
        try:
            case.validate_response(response, headers=headers, checks=[looser],
                                   transport_kwargs={"base_url": base})
        except (failure, failure_group):
            entry["schema_looser_than_validation"] += 1
    return one


def _send(client: Any, case: Any, base: str, headers: dict[str, str]) -> Any:
    """Send a schemathesis case with httpx (its ``requests`` transport does not work with
    the urllib3-future that grafana-client's niquests installs)."""
    kw = case.as_transport_kwargs(base_url=base, headers=headers)
    request: dict[str, Any] = {"method": kw["method"], "url": kw["url"],
                               "headers": kw.get("headers"), "params": kw.get("params")}
    if "json" in kw:
        request["json"] = kw["json"]
    elif isinstance(kw.get("data"), bytes | str):
        request["content"] = kw["data"]
    elif kw.get("data") is not None:
        request["data"] = kw["data"]
    return client.request(**request)


def _describe(exc: BaseException, case: Any, base: str) -> str:
    failures = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
    titles = "; ".join(f"{getattr(f, 'code', '?')} {getattr(f, 'title', f)}" for f in failures)
    return f"{titles} :: {case.as_curl_command(base_url=base)[:400]}"
