"""The dependency-audit decision on recorded ``pip-audit`` output: fail only on a known
vulnerability with a fix; say so in one line, without failing, when no vulnerability
service answered. (``unreachable_pypi.json`` and ``osv_unreachable.stderr`` were recorded
on a machine without the PyPI JSON API or OSV; the others follow pip-audit's JSON format.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from devtools.depaudit import judge, judge_run, main

DATA = Path(__file__).parent / "data" / "pip_audit"


def report(name: str) -> dict[str, object]:
    doc: dict[str, object] = orjson.loads((DATA / name).read_bytes())
    return doc


def test_a_vulnerability_with_a_fix_fails() -> None:
    verdict = judge(report("vulns_with_fix.json"))
    assert verdict.failed
    assert verdict.audited == 3  # the editable project itself is not counted
    assert verdict.fixable == ["jinja2 3.1.3 GHSA-h75v-3vvj-5mfj -> 3.1.4",
                               "pillow 10.0.0 PYSEC-2023-175 -> 10.0.1"]
    assert verdict.unfixable == ["pillow 10.0.0 GHSA-0000-nofix-0000"]
    assert verdict.lines()[0].startswith("pip-audit: FAILED: 2 known vulnerabilities")


def test_unreachable_service_is_one_line_and_does_not_fail() -> None:
    # pip-audit itself exits 0 and prints "No known vulnerabilities found" here
    verdict = judge(report("unreachable_pypi.json"))
    assert not verdict.failed and verdict.service_unreachable
    assert verdict.audited == 0 and len(verdict.not_audited) == 5
    assert verdict.lines() == ["pip-audit: could not reach its vulnerability service "
                               "(5 packages not audited); audit skipped, not failed"]


def test_a_crashed_run_without_a_report_is_unreachable() -> None:
    stderr = (DATA / "osv_unreachable.stderr").read_text()
    verdict = judge_run(1, "", stderr)
    assert not verdict.failed and verdict.service_unreachable
    (line,) = verdict.lines()
    assert "could not reach its vulnerability service" in line and "api.osv.dev" in line


def test_vulnerabilities_without_a_fix_are_listed_not_failed() -> None:
    verdict = judge(report("vuln_without_fix_partial.json"))
    assert not verdict.failed and not verdict.service_unreachable
    assert verdict.not_audited == ["private-pkg"]
    assert verdict.lines() == [
        "pip-audit: no known vulnerability with a fix in 2 packages; 1 not audited",
        "  no fix yet:    somepkg 1.0 GHSA-aaaa-bbbb-cccc"]


def test_clean_report_passes() -> None:
    verdict = judge(report("clean.json"))
    assert not verdict.failed and verdict.audited == 2 and verdict.not_audited == []


@pytest.mark.parametrize(("name", "code"), [("vulns_with_fix.json", 1), ("clean.json", 0),
                                            ("unreachable_pypi.json", 0)])
def test_exit_code(name: str, code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--report", str(DATA / name)]) == code
    assert capsys.readouterr().out.startswith("pip-audit: ")
