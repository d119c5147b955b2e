"""TOML parsing with bounds for files an operator (or an attacker with write access to
a rule directory) supplies: size, nesting depth and dotted-key length.

``tomllib`` recurses once per nesting level (a deeply nested array raises
``RecursionError``) and its cost grows with the square of a dotted key's length
(``a.a.a…=1`` with 20 000 parts takes 17 s and 1.5 GB). :func:`loads` refuses
such text with a :class:`TomlLimitError`, a ``tomllib.TOMLDecodeError`` so every
caller's existing "TOML syntax error" handling names the file.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

MAX_TOML_BYTES = 1_000_000
MAX_DEPTH = 32  # nested arrays / inline tables
MAX_DOTS_PER_LINE = 128  # dots outside strings on one line (dotted keys and floats)

_TOKEN = re.compile(r'"""|\'\'\'|["\'#\[\]{}.\n]')
_CLOSE_ML = {'"""': re.compile(r'(?<!\\)(?:\\\\)*"""'), "'''": re.compile("'''")}
_CLOSE_1 = {'"': re.compile(r'(?<!\\)(?:\\\\)*"|\n'), "'": re.compile(r"'|\n")}


class TomlLimitError(tomllib.TOMLDecodeError):
    """The text passes a size, depth or key-length bound."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)


def check_shape(text: str, max_bytes: int = MAX_TOML_BYTES) -> None:
    """Raise :class:`TomlLimitError` when ``text`` passes one of the bounds."""
    if len(text) > max_bytes:
        raise TomlLimitError(f"larger than {max_bytes} characters")
    depth = 0
    dots = 0
    line = 1
    pos = 0
    while (match := _TOKEN.search(text, pos)) is not None:
        mark = match.group()
        pos = match.end()
        if mark in _CLOSE_ML:
            end = _CLOSE_ML[mark].search(text, pos)
            pos = end.end() if end else len(text)
            line += text.count("\n", match.end(), pos)
        elif mark in _CLOSE_1:
            end = _CLOSE_1[mark].search(text, pos)
            pos = end.end() if end else len(text)
            if end is not None and end.group().endswith("\n"):
                line, dots = line + 1, 0
        elif mark == "#":
            newline = text.find("\n", pos)
            pos = len(text) if newline < 0 else newline
        elif mark == "\n":
            line, dots = line + 1, 0
        elif mark in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise TomlLimitError(f"line {line}: nested deeper than {MAX_DEPTH} levels")
        elif mark in "]}":
            depth = max(0, depth - 1)
        else:  # "."
            dots += 1
            if dots > MAX_DOTS_PER_LINE:
                raise TomlLimitError(f"line {line}: more than {MAX_DOTS_PER_LINE} dots "
                                     "(a dotted key this long is refused)")


def loads(text: str, max_bytes: int = MAX_TOML_BYTES) -> dict[str, Any]:
    """``tomllib.loads`` within the bounds; raises ``tomllib.TOMLDecodeError``."""
    check_shape(text, max_bytes)
    try:
        return tomllib.loads(text)
    except RecursionError as exc:  # defence in depth: the shape check should prevent it
        raise TomlLimitError("nested too deeply") from exc
