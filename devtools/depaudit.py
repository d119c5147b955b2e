"""Dependency audit for ``scripts/test``: run ``pip-audit`` on the installed environment and
fail only on a known vulnerability that has a fixed version.

``pip-audit`` exits 0 with "No known vulnerabilities found" when it could not look a single
package up (every one "not found on PyPI" when its JSON API is unreachable), so its exit
code is not used: its JSON report is read instead.

* a vulnerability with a fix version → exit 1, one line per vulnerability;
* no package could be looked up (no vulnerability service) → one line saying so, exit 0;
* vulnerabilities without a fix → listed, exit 0.

``python -m devtools.depaudit [--report FILE]`` (``--report`` reads a saved JSON report).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass
class Verdict:
    """What the audit found and whether it fails the run."""

    audited: int = 0
    not_audited: list[str] = field(default_factory=list)
    fixable: list[str] = field(default_factory=list)  # "name version id -> fix versions"
    unfixable: list[str] = field(default_factory=list)
    service_unreachable: bool = False

    @property
    def failed(self) -> bool:
        """True when a vulnerability with a fix version was found."""
        return bool(self.fixable)

    def lines(self) -> list[str]:
        """The report, one finding a line; the first line is the summary."""
        if self.fixable:
            head = (f"pip-audit: FAILED: {len(self.fixable)} known vulnerabilities with a fix "
                    f"available ({self.audited} packages audited)")
        elif self.service_unreachable:
            head = ("pip-audit: could not reach its vulnerability service "
                    f"({len(self.not_audited)} packages not audited); audit skipped, not failed"
                    + (f" {self.not_audited[0]}" if self.not_audited[0].startswith("(") else ""))
        else:
            head = (f"pip-audit: no known vulnerability with a fix in {self.audited} packages"
                    + (f"; {len(self.not_audited)} not audited" if self.not_audited else ""))
        out = [head]
        out += [f"  fix available: {v}" for v in self.fixable]
        out += [f"  no fix yet:    {v}" for v in self.unfixable]
        return out


def judge(report: dict[str, Any]) -> Verdict:
    """Decide from a ``pip-audit -f json`` report."""
    verdict = Verdict()
    for dep in report.get("dependencies", []):
        name = str(dep.get("name", "?"))
        if "skip_reason" in dep:
            reason = str(dep["skip_reason"]).lower()
            if "editable" not in reason:
                verdict.not_audited.append(name)
            continue
        verdict.audited += 1
        for vuln in dep.get("vulns", []):
            fixes = [str(v) for v in vuln.get("fix_versions", [])]
            text = f"{name} {dep.get('version', '?')} {vuln.get('id', '?')}"
            if fixes:
                verdict.fixable.append(f"{text} -> {', '.join(fixes)}")
            else:
                verdict.unfixable.append(text)
    verdict.service_unreachable = verdict.audited == 0 and bool(verdict.not_audited)
    return verdict


def judge_run(returncode: int, stdout: str, stderr: str) -> Verdict:
    """Decide from a finished ``pip-audit`` process (its JSON on stdout, if any)."""
    try:
        report = orjson.loads(stdout) if stdout.strip() else None
    except orjson.JSONDecodeError:
        report = None
    if isinstance(report, dict):
        return judge(report)
    # no report: pip-audit stopped before auditing (its service unreachable, say)
    reason = (stderr.strip().splitlines() or [f"exit code {returncode}"])[-1][:200]
    return Verdict(not_audited=[f"(pip-audit: {reason})"], service_unreachable=True)


def run_pip_audit(timeout: float = 300) -> Verdict:
    """Run ``pip-audit`` on this environment (editable installs, i.e. the project, skipped)."""
    exe = shutil.which("pip-audit", path=str(Path(sys.executable).parent)) or shutil.which(
        "pip-audit")
    if exe is None:
        return Verdict(not_audited=["(pip-audit is not installed: pip install -e '.[dev]')"],
                       service_unreachable=True)
    try:
        proc = subprocess.run(
            [exe, "--local", "--format", "json", "--skip-editable", "--progress-spinner", "off",
             "--timeout", "15"],
            capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return Verdict(not_audited=[f"(pip-audit did not finish in {timeout:.0f} s)"],
                       service_unreachable=True)
    return judge_run(proc.returncode, proc.stdout, proc.stderr)


def main(argv: list[str] | None = None) -> int:
    """Print the verdict; exit 1 only on a vulnerability with a fix available."""
    parser = argparse.ArgumentParser(prog="python -m devtools.depaudit",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--report", type=Path, help="judge a saved pip-audit JSON report")
    args = parser.parse_args(argv)
    verdict = judge(orjson.loads(args.report.read_bytes())) if args.report else run_pip_audit()
    print("\n".join(verdict.lines()))
    return 1 if verdict.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
