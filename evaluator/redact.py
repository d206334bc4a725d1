"""Known secrets never leave the process: whatever we store or print passes through `redact` first.

A secret is known when it is the value of an environment variable whose name says it is one (…KEY, …TOKEN,
…SECRET, …PASSWORD, the variable a profile names for its key) or the password of a URL we were given.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

MARK = "[redacted]"
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)($|_)", re.IGNORECASE)
_extra: set[str] = set()


def register(value: str | None) -> None:
    """Treat `value` as a secret from now on (short values would redact ordinary words, so they are not)."""
    if value and len(value) >= 6:
        _extra.add(value)


def secrets() -> list[str]:
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and v and len(v) >= 6}
    return sorted(found | _extra, key=len, reverse=True)  # longest first: a key containing another


def redact(text: str) -> str:
    for secret in secrets():
        if secret in text:
            text = text.replace(secret, MARK)
    return text


def strip_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password@, user, password); the password is registered as a secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if parts.username is None and parts.password is None:
        return url, None, None
    register(parts.password)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), parts.username, parts.password
