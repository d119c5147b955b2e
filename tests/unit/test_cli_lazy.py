"""The runtime apart from tooling: ``lifeline serve`` (its parser and the Service
construction path) imports no benchmark, devtools, receiver, matplotlib, Grafana SDK
or report module; every command's module loads only when that command is used."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from bench.startup import parse_importtime, tooling_group
from lifeline import cli

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = ("bench", "devtools", "lifeline.harness", "lifeline.receiver", "lifeline.depaudit",
             "matplotlib", "grafana_foundation_sdk", "dashboards.report",
             "lifeline.commands.report", "lifeline.commands.bench", "lifeline.commands.demo",
             "lifeline.commands.services", "lifeline.commands.dashboards")

# the way lifeline.cli.main resolves ``lifeline serve``, then the Service built from
# settings as serve_command builds it (without starting it)
SERVE_PATH = textwrap.dedent("""
    import sys, orjson
    from lifeline import cli
    argv = ["serve"]
    command = cli.command_of(argv)
    args = cli.build_parser(load=(command,)).parse_args(argv)
    import lifeline.service
    from lifeline.commands.common import settings_from
    from lifeline.service import Service
    service = Service(settings_from(args))
    print(orjson.dumps({"command": command, "func": args.func.__module__,
                        "modules": sorted(sys.modules)}).decode())
""")


def _forbidden(modules: list[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_serve_path_imports_no_tooling(tmp_path: Path) -> None:
    config = tmp_path / "lifeline.toml"
    config.write_text(f'run_dir = "{tmp_path / "run"}"\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", SERVE_PATH], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "LIFELINE_CONFIG": str(config)})
    assert proc.returncode == 0, proc.stderr
    out = orjson.loads(proc.stdout)
    assert out["command"] == "serve"
    assert out["func"] == "lifeline.commands.serve"
    assert "lifeline.service" in out["modules"]
    assert _forbidden(out["modules"]) == []


def test_top_level_help_lists_every_command_without_loading_them() -> None:
    code = ("import sys\nfrom lifeline import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in sys.modules if m.startswith('lifeline.commands.')"
            " and m != 'lifeline.commands.common'))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    for name, (_, help_line) in cli.COMMANDS.items():
        assert name in proc.stdout
        assert help_line.split()[0] in proc.stdout
    assert "LOADED []" in proc.stdout


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_command_table_matches_the_modules(name: str) -> None:
    """The table's help line is the one the module registers, so --help does not drift."""
    module_name, help_line = cli.COMMANDS[name]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(module_name).register(sub)
    registered = {a.dest: a.help for a in sub._choices_actions}
    assert registered == {name: help_line}


def test_command_help_loads_that_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["services", "up", "--help"])
    assert exc.value.code == 0
    assert "--with-victoria" in capsys.readouterr().out  # the real parser answered
    with pytest.raises(SystemExit) as exc:
        cli.main(["services", "nonsense"])
    assert exc.value.code == 2  # the real subcommands were there to reject it


def test_importtime_parser_counts_modules_and_top_level_time() -> None:
    sample = ("import time: self [us] | cumulative | imported package\n"
              "import time:       186 |        186 |   _io\n"
              "import time:       602 |       1080 | _frozen_importlib_external\n"
              "import time:       116 |        812 | bench.startup\n")
    modules, total_us = parse_importtime(sample)
    assert modules == ["_io", "_frozen_importlib_external", "bench.startup"]
    assert total_us == 1080 + 812
    assert tooling_group("bench.startup") == "bench"
    assert tooling_group("lifeline.service") is None
