"""Start-up cost of ``lifeline serve``: modules imported and wall time.

Runs ``python -X importtime -m lifeline serve --help`` and ``... serve`` (the
latter against an unreachable broker and InfluxDB on a closed loopback port, so
it builds the Service and exits 3 at its first connection) in fresh processes
and reports, for each: the ``-X importtime`` line count, the modules imported,
how many belong to the project, which tooling modules (benchmarks, devtools,
matplotlib, the Grafana SDK, the report) were imported although ``serve`` needs
none, the packages with the most modules, the import phase (sum of the top-level
cumulative import times) and the median wall time of ``--runs`` runs. ``--root``
measures another source tree (e.g. a checkout of an older commit) with the same
code. The ceiling is ``python -c pass`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

PROJECT = ("devices", "ingest", "rules", "alerts", "dashboards", "simulators", "lifeline",
           "bench", "devtools")
# modules ``lifeline serve`` must not import: tooling and heavy optional stacks
TOOLING = ("bench", "devtools", "lifeline.harness", "lifeline.receiver", "lifeline.depaudit",
           "matplotlib", "grafana_foundation_sdk", "dashboards.report", "lifeline.commands.report",
           "lifeline.commands.bench", "lifeline.commands.demo", "lifeline.commands.services")

CASES = {"serve --help": ["serve", "--help"], "serve": ["serve"]}
EXPECTED_EXIT = {"serve --help": 0, "serve": 3}  # 3: cannot start (no broker/InfluxDB)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``lifeline bench startup``."""
    p.add_argument("--runs", type=int, default=10, help="wall-time runs per case (median)")
    p.add_argument("--root", type=Path, default=None,
                   help="source tree to measure (default: the installed/importable lifeline)")
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")


def tooling_group(module: str) -> str | None:
    """The entry of :data:`TOOLING` that *module* belongs to, or None."""
    for t in TOOLING:
        if module == t or module.startswith(t + "."):
            return t
    return None


def parse_importtime(stderr: str) -> tuple[list[str], int]:
    """Module names in ``-X importtime`` output and the import phase in µs.

    The import phase is the sum of the cumulative times of top-level imports.
    """
    modules: list[str] = []
    total_us = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, _, rest = line.partition("import time:")
        parts = rest.split("|")
        if len(parts) != 3:
            continue
        name = parts[2].rstrip()
        stripped = name.strip()
        modules.append(stripped)
        if name.startswith(" ") and not name.startswith("  "):  # top level: one space
            total_us += int(parts[1])
    return modules, total_us


def _environment(root: Path | None, config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LIFELINE_CONFIG"] = str(config)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if root is not None:
        env["PYTHONPATH"] = str(root)
    return env


def _write_config(directory: Path) -> Path:
    """Settings whose broker and InfluxDB are a closed loopback port: serve exits 3 early."""
    config = directory / "lifeline.toml"
    config.write_text(
        f'run_dir = "{directory / "run"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 9\nconnect_timeout = "1s"\n'
        '[influx]\nurl = "http://127.0.0.1:9"\n',
        encoding="utf-8")
    return config


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc.returncode, proc.stderr


def measure(python: str, root: Path | None, runs: int) -> dict[str, Any]:
    """Measure every case of :data:`CASES` (and ``python -c pass``); a JSON-able dict."""
    cwd = root if root is not None else Path.cwd()
    out: dict[str, Any] = {"python": python, "root": str(cwd), "runs": runs, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="lifeline-startup-") as tmp:
        config = _write_config(Path(tmp))
        env = _environment(root, config)
        walls = [_run([python, "-c", "pass"], cwd, env)[0] for _ in range(runs)]
        out["python_c_pass_s"] = round(statistics.median(walls), 4)
        for case, args in CASES.items():
            _, code, stderr = _run([python, "-X", "importtime", "-m", "lifeline", *args], cwd, env)
            modules, import_us = parse_importtime(stderr)
            lines = len(stderr.splitlines())
            project = [m for m in modules if m.split(".")[0] in PROJECT]
            groups = [tooling_group(m) for m in modules]
            tooling = [g for g in groups if g is not None]
            walls = []
            codes = set()
            for _ in range(runs):
                wall, code_i, _ = _run([python, "-m", "lifeline", *args], cwd, env)
                walls.append(wall)
                codes.add(code_i)
            packages = Counter(m.split(".")[0] for m in modules)
            out["cases"][case] = {
                "exit_code": code,
                "importtime_lines": lines,
                "modules": len(modules),
                "project_modules": len(project),
                "tooling_modules": len(tooling),
                "tooling_imported": sorted(set(tooling)),
                "top_packages": dict(packages.most_common(8)),
                "import_phase_s": round(import_us / 1e6, 4),
                "wall_median_s": round(statistics.median(walls), 4),
                "wall_min_s": round(min(walls), 4),
                "exit_codes": sorted(codes),
                "ok": codes == {code} == {EXPECTED_EXIT[case]},
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the start-up benchmark."""
    root = args.root.resolve() if args.root is not None else None
    return measure(args.python, root, max(1, args.runs))


if __name__ == "__main__":  # measuring a tree that has no ``bench startup`` command
    import orjson

    parser = argparse.ArgumentParser(prog="python bench/startup.py")
    add_arguments(parser)
    print(orjson.dumps(run(parser.parse_args()), option=orjson.OPT_INDENT_2).decode())
