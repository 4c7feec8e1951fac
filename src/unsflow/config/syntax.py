"""Plain words for a config file that does not parse, and for a key that does not exist.

The JSON decoder says ``Expecting property name enclosed in double quotes: line 5
column 3`` for a trailing comma on line 4; a user wants to hear "line 4, column 21:
a comma after the last item". :func:`json_syntax_issue` finds the spot the mistake
is at and says what it is; :func:`yaml_syntax_issue` does the same for YAML.

>>> text = '{\\n  "targets": {},\\n  "subscriptions": {},\\n}'
>>> import json
>>> try:
...     json.loads(text)
... except json.JSONDecodeError as exc:
...     print(json_syntax_issue(text, exc))
line 3, column 22: expected no comma after the last item before '}' (JSON allows no trailing comma), found '"subscriptions": {},'
>>> did_you_mean("local_path", ["local-path", "s3-bucket", "format"])
'local-path'
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from unsflow.errors import ConfigIssue

__all__ = ["json_syntax_issue", "yaml_syntax_issue", "did_you_mean"]


def _where(text: str, pos: int) -> tuple[int, int, str]:
    """1-based line and column of ``pos``, and that line's text."""
    line = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return line, pos - start + 1, text[start:end if end >= 0 else len(text)]


def _prev(text: str, pos: int) -> int:
    """Index of the last non-blank character before ``pos`` (-1 if none)."""
    i = pos - 1
    while i >= 0 and text[i] in " \t\r\n":
        i -= 1
    return i


def _shown(line: str) -> str:
    line = line.strip()
    return repr(line if len(line) <= 70 else line[:67] + "...")


def json_syntax_issue(text: str, exc: json.JSONDecodeError) -> ConfigIssue:
    """One issue naming the line and column of the mistake, in plain words."""
    msg, pos = exc.msg, exc.pos
    prev = _prev(text, pos)
    nxt = text[pos:pos + 1]
    if prev >= 0 and text[prev] == "," and nxt in ("}", "]") or (
            msg.startswith("Expecting property name") and prev >= 0 and text[prev] == ","):
        closing = nxt if nxt in ("}", "]") else "}"
        line, col, src = _where(text, prev)
        return ConfigIssue(f"line {line}, column {col}",
                           f"no comma after the last item before {closing!r} (JSON allows "
                           "no trailing comma)", _shown(src))
    if msg.startswith("Expecting property name"):
        what = ("a key in double quotes (JSON has no single quotes)" if nxt == "'"
                else "a key in double quotes")
    elif msg.startswith("Expecting ',' delimiter"):
        # The decoder stops at the next item; the missing comma belongs after the last one.
        pos = prev + 1 if prev >= 0 else pos
        what = "a comma between two items"
    elif msg.startswith("Expecting ':' delimiter"):
        what = "a colon after the key"
    elif msg.startswith("Expecting value"):
        what = ("a value (a string in double quotes, a number, an object, a list, true, false "
                "or null)" if nxt != "'" else "a string in double quotes (JSON has no single "
                "quotes)")
    elif msg.startswith("Unterminated string"):
        what = "a closing double quote for the string that starts here"
    elif msg.startswith("Extra data"):
        what = "nothing after the end of the config (a second object, or a stray character)"
    elif msg.startswith("Invalid control character"):
        what = "no line break or tab inside a string (write \\n or \\t)"
    elif msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\uXXXX"):
        what = ("a valid escape after the backslash (\\\\, \\\", \\n, \\t, \\uXXXX); a Windows "
                "path needs each backslash doubled")
    else:
        what = f"valid JSON ({msg})"
    if not text.strip():
        return ConfigIssue("<root>", "a JSON object with targets and subscriptions",
                           "an empty file")
    line, col, src = _where(text, min(pos, len(text)))
    return ConfigIssue(f"line {line}, column {col}", what, _shown(src) if src.strip()
                       else "the end of the file")


def yaml_syntax_issue(exc: Any) -> ConfigIssue:
    """One issue from a ``yaml.YAMLError``, with its line and column when it has them."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    words = f"{context}: {problem}" if context else problem
    if mark is None:
        return ConfigIssue("<root>", "valid YAML", words)
    line = mark.line + 1
    col = mark.column + 1
    src = ""
    buffer = getattr(mark, "buffer", None)
    if isinstance(buffer, str):
        lines = buffer.rstrip("\0").splitlines()
        if 0 <= mark.line < len(lines):
            src = lines[mark.line]
    found = f"{words} at {_shown(src)}" if src.strip() else words
    return ConfigIssue(f"line {line}, column {col}", "valid YAML", found)


def did_you_mean(key: str, known: Iterable[str]) -> str | None:
    """The known key closest to ``key`` (a typo, snake_case for kebab-case), if any is close."""
    known = list(known)
    normal = key.replace("_", "-").lower()
    for k in known:
        if k == normal:
            return k
    found = difflib.get_close_matches(normal, known, n=1, cutoff=0.6)
    return found[0] if found else None
