"""Keeping secrets out of what the dashboard shows and logs.

Two layers:

- :func:`redact` walks a parsed config and replaces secret-looking values
  with :data:`MASK`: values of keys that name a secret (``password``,
  ``token``, ``secret-key``, ``authorization``, ``sasl.password``, ...), every
  value of a ``headers`` object, and the password part of a URL
  (``mqtt://user:PASSWORD@host``). Credential *references*
  (``secret-name``, ``secret-region``, ``provider``) name where a secret
  lives, not the secret, and stay visible.
- :class:`Scrubber` remembers every value the first layer masked (and any
  credential the dashboard resolved to connect) and replaces them in any
  text: a validation error's "found ..." part, a log line, an event. It is
  the last step before anything leaves the process.

>>> s = Scrubber()
>>> redact({"headers": {"Authorization": "Bearer abc123"}, "secret-name": "mqtt"}, s)
{'headers': {'Authorization': '•••'}, 'secret-name': 'mqtt'}
>>> s.scrub("token was 'Bearer abc123'")
"token was '•••'"
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["MASK", "ScrubFilter", "Scrubber", "is_secret_key", "redact"]

MASK = "•••"

_SECRET_KEY = re.compile(
    r"(pass(word|wd|phrase)?|secret|token|api[-_.]?key|access[-_.]?key|private[-_.]?key|"
    r"account[-_.]?key|service[-_.]?account[-_.]?key|authorization|bearer|cookie|"
    r"credentials?$|sasl[-_.]?(username|password|jaas)|client[-_.]?secret|signature)",
    re.IGNORECASE)
# Keys of a credential reference: where a secret lives, not the secret.
_REFERENCE_KEYS = {"secret-name", "secret-region", "provider", "path", "endpoint",
                   "secret_name", "secret_region"}
_URL_PASSWORD = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)")
_MIN_SECRET = 3  # shorter values are not scrubbed from free text (too many false hits)
_MIN_PART = 8  # a word of a secret value ("Bearer TOKEN") counts as a secret from this length


def is_secret_key(key: str) -> bool:
    """True when a value under ``key`` is to be masked.

    >>> [is_secret_key(k) for k in ("password", "sasl.password", "secret-name", "key-prefix")]
    [True, True, False, False]
    """
    return key not in _REFERENCE_KEYS and bool(_SECRET_KEY.search(key))


class Scrubber:
    """Replaces every secret it was told about in free text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or len(value) < _MIN_SECRET or value == MASK:
            return
        # "Bearer TOKEN", "user:password": the token and the password are secrets on their own.
        parts = [p for p in re.split(r"[\s:]+", value) if len(p) >= _MIN_PART and p != value]
        for item in (value, *parts):
            if item not in self._secrets:
                self._secrets.add(item)
                self._pattern = None

    def scrub(self, text: str) -> str:
        text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
        if not self._secrets:
            return text
        if self._pattern is None:
            # Longest first, so that a secret containing another is masked whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in alternatives))
        return self._pattern.sub(MASK, text)


def redact(data: Any, scrubber: Scrubber, *, _key: str = "", _in_headers: bool = False) -> Any:
    """A copy of ``data`` with secret values masked; each masked value is told to ``scrubber``."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            k = str(key)
            headers = k.lower() in ("headers", "http-headers")
            out[key] = redact(value, scrubber, _key=k, _in_headers=headers or _in_headers)
        return out
    if isinstance(data, list):
        return [redact(v, scrubber, _key=_key, _in_headers=_in_headers) for v in data]
    if _in_headers or (_key and is_secret_key(_key)):
        if data is None or isinstance(data, bool):
            return data
        scrubber.add(data)
        return MASK
    if isinstance(data, str):
        for match in _URL_PASSWORD.finditer(data):
            scrubber.add(match.group(2))
        return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), data)
    return data


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs secrets from every record's message."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it
            return True
        clean = self.scrubber.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = self.scrubber.scrub(text)
        return True
