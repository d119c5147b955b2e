"""The v2 callback signature: the documented canonical string, fixed test vectors (the
same as in the documentation for dispatch vendors), and what it binds."""

from __future__ import annotations

import hashlib
import hmac

from alerts.delivery.signing import callback_message, sign, sign_callback, verify, verify_callback
from simulators.dispatch import sign_callback as simulator_sign

SECRET = "0123456789abcdef0123"
BODY = b'{"action":"accept","external_id":"CG-2026-001"}'
PATH = "/api/v1/cases/42/actions"


def test_canonical_string_and_vectors() -> None:
    assert callback_message("post", PATH, "sim-42-1-accept", "1764990000", BODY) == (
        b"v2\nPOST\n/api/v1/cases/42/actions\nsim-42-1-accept\n1764990000\n" + BODY)
    keyed = sign_callback(SECRET, "POST", PATH, "sim-42-1-accept", "1764990000", BODY)
    assert keyed == "v2=cfcd2181c2a7fe5ac04b6e015c71abbecd6956f4624113a14a1c221fbd2d8b03"
    keyless = sign_callback(SECRET, "POST", PATH, "", "1764990000", BODY)
    assert keyless == "v2=495f28fd73c0c848bd68b3f57b8947b52a5e07bfece5b311cbf698715105025e"
    # the simulated dispatch system implements it on its own: the same bytes
    assert simulator_sign(SECRET, PATH, "sim-42-1-accept", "1764990000", BODY) == keyed


def test_every_part_is_bound() -> None:
    good = ("POST", PATH, "k-1", "1764990000", BODY)
    sig = sign_callback(SECRET, *good)
    assert verify_callback(SECRET, *good, sig)
    for changed in [("PUT", PATH, "k-1", "1764990000", BODY),
                    ("POST", "/api/v1/cases/43/actions", "k-1", "1764990000", BODY),
                    ("POST", PATH, "k-2", "1764990000", BODY),
                    ("POST", PATH, "", "1764990000", BODY),
                    ("POST", PATH, "k-1", "1764990001", BODY),
                    ("POST", PATH, "k-1", "1764990000", BODY + b" ")]:
        assert not verify_callback(SECRET, *changed, sig), changed
    assert not verify_callback("another-secret-0123", *good, sig)
    assert not verify_callback(SECRET, *good, sig.upper())
    assert not verify_callback(SECRET, *good, "v2=\xe9")  # non-ASCII: False, no TypeError
    # a v1 (outgoing webhook) signature over the same secret never verifies as v2
    v1 = sign(SECRET, "1764990000", BODY)
    assert not verify_callback(SECRET, *good, v1)
    assert not verify_callback(SECRET, *good, "v2=" + v1.removeprefix("sha256="))
    assert verify(SECRET, "1764990000", BODY, v1)
    expected = hmac.new(SECRET.encode(), b"1764990000." + BODY, hashlib.sha256).hexdigest()
    assert v1 == "sha256=" + expected  # the outgoing scheme is unchanged
