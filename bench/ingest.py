"""Ingest throughput: MQTT → decode → InfluxDB, against its raw paho and InfluxDB ceilings.

Starts its own Mosquitto and InfluxDB 1.x (harness) in a temporary run directory.
Measures in one run:

* ceilings: a raw paho subscriber that only counts (pre-loaded persistent session,
  QoS 0 and QoS 1), and InfluxDB's raw write rate with 5,000-line batches;
* the full path (the real :class:`lifeline.service.Service`: subscriber, decoder,
  rule engine, writer, manual acks) for single-reading messages from 10,000 devices
  at QoS 0 and QoS 1, and for 100-reading array messages — each "drained" (the
  broker holds the messages while the service is away, then the service drains
  them: the consumer alone) and "live" (a publisher process runs beside it).

Loss is published minus stored as counted by InfluxDB itself (must be 0).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.duration import Duration
from devices.model import Device
from devices.registry import write_inventory
from devtools.harness import ManagedService, process_cpu_s, start_influxdb, start_mosquitto
from ingest.gctuning import tune_gc_for_throughput
from ingest.mqttsocket import BufferedClient, FastClient
from lifeline.influxquery import count_values
from lifeline.settings import (
    ApiSettings,
    DevicesSettings,
    InfluxSettings,
    IngestSettings,
    MqttSettings,
    Settings,
)

PREFIX = "lifeline"
log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench ingest``."""
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--messages", type=int, default=200_000,
                   help="single-reading messages per full-path run")
    p.add_argument("--array-messages", type=int, default=5_000,
                   help="100-reading array messages per array run")
    p.add_argument("--array-size", type=int, default=100)
    p.add_argument("--ceiling-messages", type=int, default=200_000)
    p.add_argument("--publishers", type=int, default=2, help="publisher processes")
    p.add_argument("--live-rate", type=float, default=5000.0,
                   help="messages/s offered in the live runs (arrays: x10 readings/s)")
    p.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    p.add_argument("--stock-paho", action="store_true",
                   help="run the service with mqtt.buffered_reads = false (stock paho reads)")
    p.add_argument("--one-process", action="store_true",
                   help="run the service with mqtt.network_process = false (paho in-process)")
    p.add_argument("--raw-buffer-max", type=int, default=None,
                   help="the service's ingest.raw_buffer_max (default: the setting's; "
                        "0: no limit)")
    p.add_argument("--keep", action="store_true", help="keep the run directory")


# --------------------------------------------------------------------------- publishing


def _body(i: int, devices: int, array: int, base_ms: int) -> tuple[str, bytes]:
    dev = i % devices
    k = i // devices
    topic = f"{PREFIX}/gas-{dev:05d}/telemetry"
    if array <= 1:
        return topic, orjson.dumps({"ts": base_ms + k, "seq": k,
                                    "values": {"lel": (i % 200) / 10.0}})
    return topic, orjson.dumps([{"ts": base_ms + k * array + j, "seq": k * array + j,
                                 "values": {"lel": ((i + j) % 200) / 10.0}}
                                for j in range(array)])


def _publish(port: int, qos: int, devices: int, start: int, step: int, count: int, array: int,
             base_ms: int, rate: float, done: Any) -> None:
    """Publisher process: messages ``start, start + step, …`` (``count`` of them).

    With ``step`` publishers each owns a disjoint set of devices, so no two
    processes send the same device's readings at the same millisecond. ``rate``
    > 0 ("live"): paced to that many messages/s, each carrying its publish time
    as ``ts`` (latency is measured from it); 0: as fast as the broker takes them.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{start}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    confirmed = [0]

    def on_publish(*_: Any) -> None:
        confirmed[0] += 1

    client.on_publish = on_publish
    client.connect("127.0.0.1", port, 60)
    client.loop_start()
    live = rate > 0
    indices = [start + n * step for n in range(count)]
    payloads = [] if live else [_body(i, devices, array, base_ms) for i in indices]
    last = None
    began = time.monotonic()
    for n, i in enumerate(indices):
        if live:
            ahead = n / rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
            # ts = publish ms (the k * array offset is undone inside _body).
            k = i // devices
            topic, body = _body(i, devices, array,
                                time.time_ns() // 1_000_000 - k * max(array, 1))
        else:
            topic, body = payloads[n]
        while n - confirmed[0] > 20_000:  # packet ids wrap at 65,535: keep fewer outstanding
            time.sleep(0.001)
        last = client.publish(topic, body, qos=qos)
    if last is not None:
        last.wait_for_publish(120)
    time.sleep(0.5)  # QoS 0: let the socket drain before disconnecting
    client.disconnect()
    client.loop_stop()
    done.put(count)


def publish_all(port: int, qos: int, devices: int, total: int, array: int, base_ms: int,
                processes: int, rate: float = 0.0) -> list[Any]:
    """Start publisher processes sharing ``total`` messages (and ``rate``); returns them."""
    ctx = mp.get_context("fork")
    done = ctx.Queue()
    procs = []
    for p in range(processes):
        count = len(range(p, total, processes))
        proc = ctx.Process(target=_publish, args=(port, qos, devices, p, processes, count, array,
                                                  base_ms, rate / processes, done))
        proc.start()
        procs.append(proc)
    return procs


def _join(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(600)


# --------------------------------------------------------------------------- ceilings


def _session_client(port: int, client_id: str, qos: int, on_message: Any,
                    client_class: type[mqtt.Client] = mqtt.Client,
                    raw: bool = False) -> mqtt.Client:
    client = client_class(CallbackAPIVersion.VERSION2, client_id=client_id,
                          protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = on_message
    if raw and isinstance(client, FastClient):  # the network process's bulk read path
        client.on_raw_publish = lambda t, p, mid, q: on_message(client, None, None)
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_connect = lambda c, *a: c.subscribe(f"{PREFIX}/+/telemetry", qos)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, 60, clean_start=False, properties=props)
    client.loop_start()
    subscribed.wait(10)
    return client


def drop_session(port: int, client_id: str) -> None:
    """Remove a persistent session, so later runs do not feed its queue."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, 60, clean_start=True, properties=props)
    client.loop_start()
    time.sleep(0.3)
    client.disconnect()
    client.loop_stop()


def paho_ceiling(port: int, qos: int, devices: int, total: int, publishers: int,
                 client_class: type[mqtt.Client] = mqtt.Client,
                 raw: bool = False) -> dict[str, Any]:
    """A subscriber that only counts, draining a pre-loaded persistent session.

    The ceiling is a stock paho client; ``client_class=BufferedClient`` measures the
    same with the buffered socket reads the service uses (an extra figure);
    ``FastClient`` with ``raw`` the bulk read of the service's network process.
    """
    client_id = f"ceiling-{uuid.uuid4().hex[:6]}"
    count = [0]
    finished = threading.Event()

    def on_message(c: Any, u: Any, m: Any) -> None:
        count[0] += 1
        if count[0] >= total:
            finished.set()

    client = _session_client(port, client_id, qos, lambda *a: None)
    client.disconnect()
    client.loop_stop()
    _join(publish_all(port, qos, devices, total, 1, time.time_ns() // 1_000_000 - 600_000,
                      publishers))
    time.sleep(0.5)
    started, cpu0 = time.perf_counter(), _cpu_s()
    client = _session_client(port, client_id, qos, on_message, client_class, raw)
    finished.wait(300)
    elapsed, cpu = time.perf_counter() - started, _cpu_s() - cpu0
    client.disconnect()
    client.loop_stop()
    drop_session(port, client_id)
    return {"qos": qos, "messages": count[0], "published": total, "seconds": round(elapsed, 3),
            "messages_per_s": round(count[0] / elapsed), "cpu_s": round(cpu, 3),
            "messages_per_cpu_s": round(count[0] / cpu)}


def influx_ceiling(url: str, lines_total: int, batch: int = 5000) -> dict[str, Any]:
    """InfluxDB's raw write rate: pre-built 5,000-line batches posted one after another."""
    db = f"ceiling_{uuid.uuid4().hex[:6]}"
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{db}"'}, timeout=10)
    base = time.time_ns() - 3_600_000_000_000
    bodies = []
    for start in range(0, lines_total, batch):
        lines = [f"gas_alarm,device=gas-{i % 10_000:05d},grid=G{i % 50} lel={(i % 200) / 10.0!r} "
                 f"{base + i * 1000}" for i in range(start, min(start + batch, lines_total))]
        bodies.append("\n".join(lines).encode())
    client = httpx.Client(timeout=30)
    started = time.perf_counter()
    for body in bodies:
        resp = client.post(f"{url}/write", params={"db": db, "precision": "ns"}, content=body)
        resp.raise_for_status()
    elapsed = time.perf_counter() - started
    client.close()
    return {"lines": lines_total, "batch_lines": batch, "seconds": round(elapsed, 3),
            "lines_per_s": round(lines_total / elapsed)}


# --------------------------------------------------------------------------- full path


def _cpu_s() -> float:
    """CPU time (user + system) of this process so far: publishers and servers are
    other processes, so on a shared machine this is the consumer's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _net_cpu_s(service: Any) -> float:
    """CPU time of the service's MQTT network process (0 when it runs in-process)."""
    return process_cpu_s(getattr(service.subscriber, "pid", None))


def _servers_cpu_s(servers: dict[str, int] | None) -> dict[str, float]:
    """CPU time so far of Mosquitto and InfluxDB (by name)."""
    return {name: process_cpu_s(pid) for name, pid in (servers or {}).items()}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def full_path(run: Path, mqtt_port: int, influx_url: str, inventory: Path, *, qos: int,
              devices: int, messages: int, array: int, publishers: int,
              live_rate: float = 0.0, buffered_reads: bool = True,
              network_process: bool = True, raw_buffer_max: int = 100_000,
              servers: dict[str, int] | None = None) -> dict[str, Any]:
    """The real service draining (or keeping up with) ``messages`` messages."""
    from lifeline.service import Service  # noqa: PLC0415 - heavy

    live = live_rate > 0

    name = f"{'live' if live else 'drain'}_q{qos}_a{array}"
    db = f"bench_{name}_{uuid.uuid4().hex[:6]}"
    settings = Settings(
        run_dir=run / name,
        mqtt=MqttSettings(port=mqtt_port, client_id=f"bench-{db}", qos=qos,
                          buffered_reads=buffered_reads, network_process=network_process),
        influx=InfluxSettings(url=influx_url, database=db),
        ingest=IngestSettings(metrics_interval=Duration("1h"), spool_fsync=False,
                              raw_buffer_max=raw_buffer_max),
        devices=DevicesSettings(inventory=inventory),
        api=ApiSettings(enabled=False),
    )
    readings = messages * max(array, 1)
    service = Service(settings)
    latencies: list[np.ndarray[Any, Any]] = []
    decode = service.pipeline.decoder.decode

    def decode_and_time(batch: Any) -> Any:
        result = decode(batch)
        stamps = result.batch.ts_ns
        if live and len(stamps):
            def durable(stamps: Any = stamps) -> None:
                latencies.append(time.time_ns() - stamps)
            service.writer.submit([], durable)  # fires after this batch is stored
        return result

    if live:
        service.pipeline.decoder.decode = decode_and_time  # type: ignore[method-assign,assignment]
    base_ms = time.time_ns() // 1_000_000 - 3_600_000
    stop = threading.Event()
    if not live:
        # Create the persistent session, go away, let the broker queue everything.
        service.start()
        if not service.subscriber.subscribed.wait(30):
            raise RuntimeError("the service did not subscribe within 30 s")
        service.shutdown()
        _join(publish_all(mqtt_port, qos, devices, messages, array, base_ms, publishers))
        time.sleep(0.5)
        service = Service(settings)
        tune_gc_for_throughput()  # as `lifeline serve` does
        service.start()  # connects; paho buffers until the pipeline thread runs below
        started, cpu0 = time.perf_counter(), _cpu_s()
        net0 = _net_cpu_s(service)
        servers0 = _servers_cpu_s(servers)
        procs: list[Any] = []
    else:
        tune_gc_for_throughput()  # as `lifeline serve` does
        service.start()
        if not service.subscriber.subscribed.wait(30):
            raise RuntimeError("the service did not subscribe within 30 s")
        started, cpu0 = time.perf_counter(), _cpu_s()
        net0 = _net_cpu_s(service)
        servers0 = _servers_cpu_s(servers)
        procs = publish_all(mqtt_port, qos, devices, messages, array, base_ms, publishers,
                            live_rate)
    stored_at: list[float] = []
    step = service.pipeline.step
    marked = [False]

    def step_then_mark(messages: Any, on_durable: Any = None) -> Any:
        out = step(messages, on_durable)
        if not marked[0] and service.stats.decoded_values >= readings:
            # Submitted from the pipeline thread after the step that decoded the last
            # readings has submitted their lines: fires once all of them are in InfluxDB
            # (a marker sent from this thread could overtake the last batch).
            service.writer.submit([], lambda: stored_at.append(time.perf_counter()))
            marked[0] = True
        return out

    service.pipeline.step = step_then_mark  # type: ignore[method-assign]
    runner = threading.Thread(target=service.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 300
    last_log = time.monotonic()
    while not stored_at and time.monotonic() < deadline:
        time.sleep(0.005)
        if time.monotonic() - last_log > 5:
            last_log = time.monotonic()
            log.info("%s: received=%d decoded=%d stored=%d buffered=%d dups=%d dead=%d", name,
                     service.stats.received, service.stats.decoded_values,
                     service.writer.stats.lines_written, len(service.buffer),
                     service.ingest.duplicates, service.stats.dead_lettered)
    stored_at.append(time.perf_counter())
    elapsed, cpu = stored_at[0] - started, _cpu_s() - cpu0
    net_cpu = _net_cpu_s(service) - net0
    servers_cpu = {k: round(v - servers0[k], 3) for k, v in _servers_cpu_s(servers).items()}
    _join(procs)
    stop.set()
    runner.join(120)
    drop_session(mqtt_port, settings.mqtt.client_id)
    stored = count_values(influx_url, db, ["gas_alarm"])
    result: dict[str, Any] = {
        "mode": "live" if live else "drained",
        "qos": qos,
        "readings_per_message": max(array, 1),
        "messages": messages,
        "readings_published": readings,
        "readings_stored": stored,
        "readings_lost": readings - stored,
        "duplicates_dropped": service.ingest.duplicates,
        "dead_lettered": service.stats.dead_lettered,
        "seconds": round(elapsed, 3),
        "offered_messages_per_s": round(live_rate) if live else None,
        "messages_per_s": round(messages / elapsed),
        "readings_per_s": round(readings / elapsed),
        "cpu_s": round(cpu, 3),
        "network_process_cpu_s": round(net_cpu, 3),
        "messages_per_cpu_s": round(messages / (cpu + net_cpu)),
        # the other programs on the two cores in the same window (publishers excluded)
        "servers_cpu_s": servers_cpu,
        "peak_rss_mb": _peak_rss_mb(),  # of the bench process so far (all runs)
        # most messages waiting for the decoder at once, and how often the network
        # process stopped reading at ingest.raw_buffer_max
        "raw_buffer_peak": service.buffer.peak,
        "read_holds": service.subscriber.read_holds,
    }
    if latencies:
        lat = np.concatenate(latencies) / 1e6
        result["latency_ms_p50"] = round(float(np.percentile(lat, 50)), 1)
        result["latency_ms_p99"] = round(float(np.percentile(lat, 99)), 1)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement; returns the JSON document."""
    if args.quick:
        args.messages, args.array_messages, args.ceiling_messages = 20_000, 500, 20_000
    root = Path(tempfile.mkdtemp(prefix="lifeline-bench-"))
    mosq: ManagedService | None = None
    influx: ManagedService | None = None
    try:
        mosq = start_mosquitto(root, extra_config="queue_qos0_messages true")
        influx = start_influxdb(root, database="lifeline")
        port, url = mosq.info.port, influx.info.url
        inventory = root / "inventory.csv"
        write_inventory(inventory, [Device(f"gas-{i:05d}", "gas_alarm", grid=f"G{i % 50}",
                                           district=f"D{i % 7}", unit="gas-co")
                                    for i in range(args.devices)])
        ceilings = {
            "paho_qos0": paho_ceiling(port, 0, args.devices, args.ceiling_messages,
                                      args.publishers),
            "paho_qos1": paho_ceiling(port, 1, args.devices, args.ceiling_messages,
                                      args.publishers),
            # Extra figures, not the ceiling: paho with the service's read path
            # (ingest.mqttsocket: buffered reads; FastClient adds the light PUBLISH decode).
            "paho_buffered_qos0": paho_ceiling(port, 0, args.devices, args.ceiling_messages,
                                               args.publishers, BufferedClient),
            "paho_fast_qos0": paho_ceiling(port, 0, args.devices, args.ceiling_messages,
                                           args.publishers, FastClient),
            "paho_fast_qos1": paho_ceiling(port, 1, args.devices, args.ceiling_messages,
                                           args.publishers, FastClient),
            "paho_bulk_qos0": paho_ceiling(port, 0, args.devices, args.ceiling_messages,
                                           args.publishers, FastClient, raw=True),
            "paho_bulk_qos1": paho_ceiling(port, 1, args.devices, args.ceiling_messages,
                                           args.publishers, FastClient, raw=True),
            "influx_write": influx_ceiling(url, 500_000 if not args.quick else 50_000),
        }
        common = {"devices": args.devices, "publishers": args.publishers,
                  "buffered_reads": not args.stock_paho,
                  "network_process": not args.one_process,
                  "raw_buffer_max": (IngestSettings().raw_buffer_max
                                     if args.raw_buffer_max is None else args.raw_buffer_max),
                  "servers": {"mosquitto": mosq.info.pid, "influxdb": influx.info.pid}}
        runs = {}
        for live in (False, True):
            mode = "live" if live else "drained"
            single_rate = args.live_rate if live else 0.0
            array_rate = args.live_rate / args.array_size * 10 if live else 0.0
            runs[f"{mode}_single_qos0"] = full_path(
                root, port, url, inventory, qos=0, array=1, live_rate=single_rate,
                messages=args.messages // (4 if live else 1), **common)
            runs[f"{mode}_single_qos1"] = full_path(
                root, port, url, inventory, qos=1, array=1, live_rate=single_rate,
                messages=args.messages // (4 if live else 1), **common)
            runs[f"{mode}_array_qos1"] = full_path(
                root, port, url, inventory, qos=1, messages=args.array_messages // (
                    4 if live else 1), array=args.array_size, live_rate=array_rate, **common)
        c0 = ceilings["paho_qos0"]["messages_per_s"]
        c1 = ceilings["paho_qos1"]["messages_per_s"]
        f0 = ceilings["paho_fast_qos0"]["messages_per_s"]
        ratios = {
            "drained_single_qos0_vs_paho_fast_qos0": round(
                runs["drained_single_qos0"]["messages_per_s"] / f0, 3),
            "paho_fast_qos0_vs_paho_qos0": round(f0 / ceilings["paho_qos0"]["messages_per_s"], 3),
            "drained_single_qos0_vs_paho_qos0": round(
                runs["drained_single_qos0"]["messages_per_s"] / c0, 3),
            "drained_single_qos1_vs_paho_qos1": round(
                runs["drained_single_qos1"]["messages_per_s"] / c1, 3),
            "drained_array_readings_vs_influx_write": round(
                runs["drained_array_qos1"]["readings_per_s"]
                / ceilings["influx_write"]["lines_per_s"], 3),
        }
        targets = {
            "single_qos0_readings_per_s>=50000":
                runs["drained_single_qos0"]["readings_per_s"] >= 50_000,
            "single_qos1_readings_per_s>=30000":
                runs["drained_single_qos1"]["readings_per_s"] >= 30_000,
            "array_readings_per_s>=200000":
                runs["drained_array_qos1"]["readings_per_s"] >= 200_000,
            "ratio_to_paho>=0.6": ratios["drained_single_qos0_vs_paho_qos0"] >= 0.6,
            "zero_loss": all(r["readings_lost"] == 0 for r in runs.values()),
        }
        return {"benchmark": "ingest", "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                "service_buffered_reads": not args.stock_paho,
                "service_network_process": not args.one_process,
                "service_raw_buffer_max": common["raw_buffer_max"],
                "ceilings": ceilings,
                "runs": runs, "ratios": ratios, "targets_met": targets}
    finally:
        if mosq is not None:
            mosq.stop()
        if influx is not None:
            influx.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
