"""MQTT subscriber on paho-mqtt 2.x: the network thread only buffers messages."""

from __future__ import annotations

import itertools
import logging
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from common.retry import Backoff, RetriesExhaustedError, retry_until
from ingest.errors import BrokerRejectedError, BrokerUnavailableError
from ingest.mqttsocket import BufferedClient, FastClient
from ingest.raw import RawMessage

log = logging.getLogger(__name__)
_SESSIONS = [itertools.count(1)]  # a holder: a network process renumbers it
# CONNACK reasons that retrying cannot cure: client id not valid, bad user name or
# password, not authorized, banned, bad authentication method (MQTT 5 codes; paho maps
# the 3.1.1 return codes onto them).
_NOT_RETRYABLE = frozenset({0x85, 0x86, 0x87, 0x8A, 0x8C})
_SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT: another client connected with our client id


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """How to reach the broker and what to subscribe to."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "lifeline-serve"
    protocol: int = 5
    qos: int = 1
    clean_start: bool = False
    session_expiry_s: int = 3600
    keepalive_s: int = 30
    username: str = ""
    password: str = ""
    tls: bool = False
    tls_ca_file: str = ""
    shared_group: str = ""
    connect_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    manual_ack: bool = True  # acknowledge QoS 1/2 only once stored, spooled or dead-lettered
    buffered_reads: bool = True  # ingest.mqttsocket.FastClient: buffered reads, light decode
    expect_session: bool = False  # the broker should hold our session (made by an earlier
    # connection of this service): a first CONNACK without it counts as a lost session
    leader_gated: bool = False  # active/standby: after a lost connection stay disconnected
    # until :meth:`MqttSubscriber.rejoin` (called while this node leads). Brokers such as
    # Mosquitto 2.0 close a taken-over session's socket without a reason code, so a
    # frozen ex-leader's network loop cannot tell a takeover from a broker restart and
    # must not reconnect on its own (it would take the session back from the new leader).


class MessageSink(Protocol):
    """Where the network thread puts messages (a :class:`ingest.batch.RawBuffer`)."""

    def put(self, topic: str, payload: bytes, received_at_ns: int, mid: int, qos: int,
            session: int) -> None:
        """Take one message; called on the network thread, must not block."""


def session_numbers(start: int) -> None:
    """Number the connections of this process from ``start`` (a network process gets
    its own range, so an ack meant for an earlier process's connection is refused)."""
    _SESSIONS[0] = itertools.count(start)


class MqttSubscriber:
    """Subscribes to ``topics`` and puts every message into a :class:`MessageSink`."""

    def __init__(self, options: MqttOptions, topics: Sequence[str], buffer: MessageSink) -> None:
        self.options = options
        self.topics = [
            f"$share/{options.shared_group}/{t}" if options.shared_group else t for t in topics
        ]
        self.buffer = buffer
        self.connected = False
        self.connects = 0
        protocol = MQTTProtocolVersion.MQTTv5 if options.protocol == 5 else (
            MQTTProtocolVersion.MQTTv311
        )
        self._v5 = protocol is MQTTProtocolVersion.MQTTv5
        client_class = FastClient if options.buffered_reads else mqtt.Client
        self.client = client_class(
            CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=protocol,
            clean_session=None if self._v5 else options.clean_start,
            manual_ack=options.manual_ack,
            # leader-gated: the loop ends on a lost connection; rejoin() starts it again
            reconnect_on_failure=not options.leader_gated,
        )
        if options.username:
            self.client.username_pw_set(options.username, options.password or None)
        if options.tls:
            try:
                ctx = ssl.create_default_context(cafile=options.tls_ca_file or None)
            except (OSError, ssl.SSLError) as exc:
                raise BrokerRejectedError(
                    f"cannot load mqtt.tls_ca_file {options.tls_ca_file!r}: "
                    f"{getattr(exc, 'strerror', None) or exc}") from exc
            self.client.tls_set_context(ctx)
        self.client.reconnect_delay_set(int(options.reconnect_min_s), int(options.reconnect_max_s))
        self.client.max_inflight_messages_set(1000)
        self.acked = 0
        self.session = 0  # unique in the process per connection: acks are only valid on it
        self.paused = False
        self.deferred = 0  # QoS 1/2 messages left unacknowledged while paused (redelivered)
        self.dropped_at_shutdown = 0
        self.stale_acks = 0  # acks skipped: the connection they belong to is gone
        # persistent session: a reconnect must find it on the broker ("session present")
        self.persistent = not options.clean_start and (
            options.session_expiry_s > 0 or not self._v5)
        self._expect_session = options.expect_session and self.persistent
        self.sessions_lost = 0  # connects that expected the session and found none
        self.sessions_taken_over = 0  # disconnected: another client took our client id
        self.sessions_kept = 0  # connects that expected the session and found it
        self.yielded = False  # leader_gated: disconnected, waiting for rejoin()
        self._disconnected_at: float | None = None
        self._disconnect_reason = ""
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if isinstance(self.client, FastClient):
            self.client.on_raw_publish = self._on_raw
        full = getattr(buffer, "full", None)  # flow control: only the buffered client reads
        if isinstance(self.client, BufferedClient) and full is not None:  # in its own loop
            self.client.hold = full
        self.subscribed = threading.Event()  # set once the broker granted the subscriptions
        self._connack = threading.Event()  # set on the first CONNACK (accepted or refused)
        self._gone = threading.Event()  # set by on_disconnect: DISCONNECT written or link lost
        self._refused: Any = None  # reason code of a refusal that retrying cannot cure

    def start(self) -> None:
        """Connect (retrying with backoff up to ``connect_timeout_s``), run the loop and
        wait for the broker to accept the connection.

        Raises :class:`BrokerRejectedError` at once when TLS verification fails or the
        broker refuses the credentials, :class:`BrokerUnavailableError` when it cannot be
        reached (or does not answer) within ``connect_timeout_s``.
        """
        opts = self.options
        where = f"MQTT broker {opts.host}:{opts.port}"
        deadline = time.monotonic() + opts.connect_timeout_s

        def retrying(attempt: int, exc: Exception, delay: float) -> None:
            log.warning("MQTT broker %s:%d unreachable (attempt %d): %s; retrying in %.1fs",
                        opts.host, opts.port, attempt, exc, delay)

        try:
            # SSLError is an OSError but not transient
            retry_until(self._connect, Backoff(base_s=0.5, max_s=opts.reconnect_max_s),
                        retryable=lambda exc: (isinstance(exc, OSError)
                                               and not isinstance(exc, ssl.SSLError)),
                        deadline=deadline, on_retry=retrying)
        except ssl.SSLError as exc:
            detail, hint = exc.reason or str(exc), ""
            if isinstance(exc, ssl.SSLCertVerificationError):
                detail = f"certificate verify failed: {exc.verify_message}"
                hint = " (check mqtt.tls_ca_file)"
            raise BrokerRejectedError(f"TLS with {where} failed: {detail}{hint}") from exc
        except RetriesExhaustedError as exc:
            raise BrokerUnavailableError(
                f"MQTT broker {opts.host}:{opts.port} unreachable after {exc.attempts} "
                f"attempts: {exc.error}"
            ) from exc.error
        self.client.loop_start()
        self._connack.wait(max(deadline - time.monotonic(), 1.0))
        if self._refused is not None or not self._connack.is_set():
            self.client.disconnect()
            self.client.loop_stop()
            if self._refused is not None:
                who = f" for user {opts.username!r}" if opts.username else " (no username)"
                raise BrokerRejectedError(
                    f"{where} refused the connection{who}: {self._refused} "
                    "(check mqtt.username / mqtt.password)")
            raise BrokerUnavailableError(f"{where} accepted no MQTT connection within "
                                         f"{opts.connect_timeout_s:.0f}s")

    def rejoin(self) -> bool:
        """Connect again after a lost connection (``leader_gated``: the caller leads);
        True when the connection was made (the broker's CONNACK follows on the loop)."""
        if not self.yielded:
            return False
        self.client.loop_stop()  # the loop that stopped on the takeover
        try:
            self._connect()
        except OSError as exc:
            log.warning("MQTT rejoin failed: %s", exc)
            return False
        self.yielded = False
        self.client.loop_start()
        log.info("MQTT: rejoined the session of client id %r", self.options.client_id)
        return True

    def _connect(self) -> None:
        opts = self.options
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = opts.session_expiry_s
            self.client.connect(
                opts.host, opts.port, opts.keepalive_s,
                clean_start=opts.clean_start, properties=props,
            )
        else:
            self.client.connect(opts.host, opts.port, opts.keepalive_s)

    def ack(self, messages: Sequence[RawMessage]) -> None:
        """Acknowledge QoS 1/2 messages (in arrival order) once they are safe.

        Messages from an earlier connection are not acknowledged: the broker
        redelivers them on the new one and the decoder drops the duplicates.
        """
        if not self.options.manual_ack:
            return
        self.ack_ids([(m.session, m.mid, m.qos) for m in messages if m.qos])

    def ack_ids(self, acks: Sequence[tuple[int, int, int]]) -> None:
        """Acknowledge ``(session, mid, qos)`` triples, in order (see :meth:`ack`)."""
        if not self.options.manual_ack:
            return
        session = self.session
        client = self.client
        bulk = client.ack_batch if isinstance(client, FastClient) else None
        puback: list[int] = []
        for m_session, mid, qos in acks:
            if m_session != session:
                self.stale_acks += 1
            elif qos == 1 and bulk is not None:
                puback.append(mid)
            else:
                if puback and bulk is not None:  # keep the order of acknowledgements
                    bulk(puback)
                    self.acked += len(puback)
                    puback = []
                client.ack(mid, qos)
                self.acked += 1
        if puback and bulk is not None:
            bulk(puback)
            self.acked += len(puback)

    @property
    def read_holds(self) -> int:
        """Times reading stopped because the buffer was full."""
        return self.client.holds if isinstance(self.client, BufferedClient) else 0

    def pause(self) -> None:
        """Stop taking messages: QoS 1/2 stay unacknowledged and the broker redelivers
        them to the next session; QoS 0 ones are counted. The connection stays up for acks."""
        self.paused = True

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        if self.deferred or self.dropped_at_shutdown:
            log.info("shutdown: %d QoS 1/2 messages left to the next session, %d QoS 0 "
                     "messages not taken", self.deferred, self.dropped_at_shutdown)
        self._gone.clear()
        if self.client.disconnect() == mqtt.MQTT_ERR_SUCCESS and self.connected:
            # paho writes what is queued (the last PUBACKs) before the DISCONNECT and calls
            # on_disconnect once that is written; stopping its thread sooner would drop
            # them and the broker would redeliver those messages
            self._gone.wait(2.0)
        self.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            if getattr(reason, "value", 0) in _NOT_RETRYABLE and not self._connack.is_set():
                self._refused = reason
                self._connack.set()
            return
        self.connected = True
        self._connack.set()
        self.connects += 1
        self.session = next(_SESSIONS[0])
        present = bool(getattr(flags, "session_present", False))
        log.info("MQTT connected to %s:%d (session present: %s)",
                 self.options.host, self.options.port, present)
        if self._expect_session:
            if present:
                self.sessions_kept += 1
            else:
                self.sessions_lost += 1
                self._warn_session_lost()
        self._expect_session = self.persistent
        client.subscribe([(t, self.options.qos) for t in self.topics])

    def _warn_session_lost(self) -> None:
        opts = self.options
        away = ""
        if self._disconnected_at is not None:
            gone = time.monotonic() - self._disconnected_at
            away = f"; disconnected {gone:.1f}s before ({self._disconnect_reason or 'no reason'})"
            if self._v5 and gone >= opts.session_expiry_s:
                away += ", longer than mqtt.session_expiry: the broker let it expire"
        log.warning(
            "MQTT session lost: broker %s:%d accepted client id %r (user %r) without the "
            "persistent session it held (lost sessions: %d%s); messages it had queued for "
            "the service are gone. Causes: another client connected with this client id "
            "(bind client ids to credentials: use_username_as_clientid true, see `lifeline "
            "devices mqtt-acl`), or the broker restarted without its persistence file",
            opts.host, opts.port, opts.client_id, opts.username, self.sessions_lost, away)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        failed = [r for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("MQTT subscription refused for %s: %s", self.topics, failed)
            return
        self.subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected = False
        self._gone.set()
        self.session = 0  # acks of that connection are void: the broker redelivers
        self.subscribed.clear()
        self._disconnected_at = time.monotonic()
        self._disconnect_reason = str(reason)
        if self.options.leader_gated and reason.is_failure:
            self.yielded = True  # loop_forever ends: reconnect_on_failure is off
            log.warning("MQTT disconnected (%s): reconnecting only while this node leads",
                        reason)
        elif getattr(reason, "value", 0) == _SESSION_TAKEN_OVER:
            self.sessions_taken_over += 1
            log.warning(
                "MQTT session taken over: broker %s:%d disconnected client id %r (user %r) "
                "because another client connected with the same client id (takeovers: %d); "
                "what it had queued for the service may be lost. Bind client ids to "
                "credentials (use_username_as_clientid true, see `lifeline devices mqtt-acl`)",
                self.options.host, self.options.port, self.options.client_id,
                self.options.username, self.sessions_taken_over)
        elif reason.is_failure:
            log.warning("MQTT disconnected: %s; reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_raw(bytes(msg._topic), bytes(msg.payload), msg.mid, msg.qos)

    def _on_raw(self, topic_bytes: bytes, payload: bytes, mid: int, qos: int) -> None:
        if self.paused:
            if qos == 1 and self.options.manual_ack:
                self.deferred += 1  # unacknowledged: the broker redelivers it
                return
            if qos == 0:
                self.dropped_at_shutdown += 1  # at most once, arriving during the shutdown
                return
            # QoS 2: paho sent PUBREC on receipt, the broker will not send it again: keep it.
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:  # brokers should refuse these; never crash if one does not
            topic = topic_bytes.decode("utf-8", "replace")
        self.buffer.put(topic, payload, time.time_ns(), mid, qos, self.session)
