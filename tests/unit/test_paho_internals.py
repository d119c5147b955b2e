"""The paho-mqtt internals that the fast path (``ingest/mqttsocket.py``) relies on.

paho-mqtt is pinned to the minor range these were verified on (``pyproject.toml``).
When an upgrade moves one of them, this test fails first and names what moved, instead
of the fast path failing at run time in a network thread. After changing the pin:
re-read the named paho code, adapt ``ingest/mqttsocket.py`` and run
``tests/integration/test_ingest_mqttsocket.py`` (the fast path against stock paho).
"""

from __future__ import annotations

import inspect
import threading
import tomllib
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ingest.mqttsocket import BufferedClient, FastClient

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
TESTED = "2.1"  # the minor versions the internals below were read on: 2.1.x and 2.2.x

# private methods the fast path calls or overrides, with the parameters it passes
METHODS: dict[str, list[str]] = {
    "_create_socket": [],
    "_packet_read": [],
    "_loop_rc_handle": ["rc"],
    "_send_puback": ["mid"],
    "_packet_queue": ["command", "packet", "mid", "qos"],
    "_handle_publish": [],
    "_handle_on_message": ["message"],
}
# private attributes it reads or writes on a constructed client
ATTRIBUTES = ["_sock", "_in_packet", "_protocol", "_manual_ack", "_logger",
              "_msgtime_mutex", "_last_bytes_received", "_ping_t"]


def _fail(what: str) -> str:
    return (f"paho-mqtt {version('paho-mqtt')}: {what}. ingest/mqttsocket.py relies on it; "
            "re-read paho's code, adapt the fast path, run tests/integration/"
            "test_ingest_mqttsocket.py, then update the paho-mqtt pin in pyproject.toml")


def test_the_installed_paho_is_inside_the_pinned_range() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in deps if d.startswith("paho-mqtt")]
    installed = Version(version("paho-mqtt"))
    assert installed in pin.specifier, _fail(f"not in the pinned range {pin.specifier}")
    assert installed >= Version(TESTED)
    # the pin must stop before the next minor version that nobody has read
    assert not pin.specifier.contains("2.99"), "pin paho-mqtt below an unverified minor"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_private_methods_keep_their_signature(name: str) -> None:
    method = getattr(mqtt.Client, name, None)
    assert callable(method), _fail(f"Client.{name} is gone")
    params = list(inspect.signature(method).parameters)[1:]
    assert params[:len(METHODS[name])] == METHODS[name], _fail(
        f"Client.{name} now takes {params}, the fast path passes {METHODS[name]}")


def test_private_attributes_exist_with_their_types() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe")
    missing = [a for a in ATTRIBUTES if not hasattr(client, a)]
    assert not missing, _fail(f"Client attributes {missing} are gone")
    assert isinstance(client._in_packet, dict), _fail("_in_packet is no longer a dict")
    assert {"command", "packet"} <= set(client._in_packet), _fail(
        f"_in_packet keys are now {sorted(client._in_packet)}")
    assert isinstance(client._msgtime_mutex, type(threading.Lock())), _fail(
        "_msgtime_mutex is no longer a lock")
    assert isinstance(client._manual_ack, bool)
    assert callable(mqtt.time_func), _fail("client.time_func is gone")
    assert mqtt.PUBACK == 0x40, _fail("PUBACK constant changed")
    assert MQTTErrorCode.MQTT_ERR_SUCCESS == 0


def test_the_fast_clients_override_what_paho_calls() -> None:
    """Our overrides must still be what paho's loop calls (same names on the base)."""
    for cls, names in ((BufferedClient, ["_create_socket", "loop_read"]),
                       (FastClient, ["_handle_publish"])):
        for name in names:
            assert name in vars(cls), f"{cls.__name__}.{name} is no longer overridden"
            assert hasattr(mqtt.Client, name), _fail(f"Client.{name} is gone")
    source = inspect.getsource(mqtt.Client.loop_read)
    assert "_packet_read" in source, _fail(
        "Client.loop_read no longer reads through _packet_read")
    source = inspect.getsource(mqtt.Client._packet_handle)
    assert "_handle_publish" in source, _fail(
        "Client._packet_handle no longer dispatches PUBLISH to _handle_publish")
