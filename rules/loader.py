"""Load rule files (TOML) with errors that name the file, the rule and the field."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common import safetoml
from rules.errors import RuleFileError
from rules.kinds import KINDS, kind_of
from rules.model import Rule

MAX_RULE_FILE_BYTES = 1_000_000


def load_rules(paths: Iterable[Path]) -> list[Rule]:
    """Load every rule of the given files and directories (``*.toml``, sorted)."""
    rules: list[Rule] = []
    seen: dict[str, Path] = {}
    for path in paths:
        files = sorted(path.glob("*.toml")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise RuleFileError(f"{path}: no *.toml rule files in this directory")
        for file in files:
            for rule in load_rule_file(file):
                if rule.id in seen:
                    raise RuleFileError(
                        f"{file}: rule {rule.id!r}: duplicate id (first defined in {seen[rule.id]})"
                    )
                seen[rule.id] = file
                rules.append(rule)
    for rule in rules:
        field, components = kind_of(rule).references(rule)
        for component in components:
            target = next((r for r in rules if r.id == component), None)
            if target is None or target.id == rule.id:
                raise RuleFileError(f"{seen[rule.id]}: rule {rule.id!r}: field {field!r}: "
                                    f"unknown rule {component!r}")
            if kind_of(target).references(target)[1]:
                raise RuleFileError(f"{seen[rule.id]}: rule {rule.id!r}: field {field!r}: "
                                    f"{component!r} is itself a composite")
    return rules


def load_rule_file(path: Path) -> list[Rule]:
    """Load one rule file."""
    try:
        if path.stat().st_size > MAX_RULE_FILE_BYTES:
            raise RuleFileError(f"{path}: rule file larger than {MAX_RULE_FILE_BYTES} bytes")
        text = path.read_text("utf-8")
    except FileNotFoundError as exc:
        raise RuleFileError(f"{path}: rule file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"{path}: cannot read rule file: {exc}") from exc
    return parse_rules(text, source=str(path))


def parse_rules(text: str, *, source: str) -> list[Rule]:
    """Parse rule TOML text; ``source`` names it in errors."""
    try:
        data = safetoml.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleFileError(f"{source}: TOML syntax error: {exc}") from exc
    unknown = set(data) - {"rule"}
    if unknown:
        raise RuleFileError(f"{source}: unknown top-level keys: {', '.join(sorted(unknown))}")
    entries = data.get("rule", [])
    if not isinstance(entries, list):
        raise RuleFileError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    return [_parse_rule(entry, index, source) for index, entry in enumerate(entries, 1)]


def _parse_rule(entry: Any, index: int, source: str) -> Rule:
    if not isinstance(entry, dict):
        raise RuleFileError(f"{source}: rule #{index}: must be a table")
    rule_id = entry.get("id")
    where = f"{source}: " + (f"rule {rule_id!r}" if isinstance(rule_id, str) else f"rule #{index}")
    kind = entry.get("kind", "threshold")
    rule_kind = KINDS.get(kind) if isinstance(kind, str) else None
    if rule_kind is None:
        raise RuleFileError(f"{where}: field 'kind': unknown kind {kind!r}")
    try:
        rule: Rule = rule_kind.parse(entry)
        return rule
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        field = ".".join(loc) or "rule"
        if first["type"] == "extra_forbidden":
            raise RuleFileError(f"{where}: field {field!r}: unknown key") from exc
        raise RuleFileError(f"{where}: field {field!r}: {first['msg']}") from exc

