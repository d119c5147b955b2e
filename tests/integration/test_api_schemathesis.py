"""schemathesis over every operation of the API's OpenAPI schema, against the app served
by uvicorn with a SQLite database (small counts here; ``lifeline bench fuzz --target api
--examples N`` runs a bigger campaign)."""

from __future__ import annotations

import pytest

from bench.fuzz import api_campaign

pytestmark = pytest.mark.integration


def test_no_5xx_and_every_response_as_documented() -> None:
    result = api_campaign(examples=4, seed=1)
    failing = {op: e["examples"] for op, e in result["operations"].items() if e["failures"]}
    assert failing == {}
    assert result["failures"] == 0
    assert result["operations_tested"] >= 25
    assert result["inputs"] >= 4 * result["operations_tested"]
    statuses = {s for e in result["operations"].values() for s in e["statuses"]}
    assert not any(s.startswith("5") for s in statuses), statuses
    assert {"200", "401", "422"} <= statuses  # authorised, refused and invalid calls all made
