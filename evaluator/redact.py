"""Known secrets never leave the process: whatever we store or print passes through `redact` first.

A secret is known when it is the value of an environment variable whose name says it is one (…KEY, …TOKEN,
…SECRET, …PASSWORD, the variable a profile names for its key) or the password of a URL we were given. A
server may echo it back in any form: whole, without the `Bearer ` a variable held, JSON-escaped, or cut by a
slice taken before the text came here (its head at the text's end, its tail at its start). A masked form such
as `sk-abc***xyz` holds no secret and is kept as it is.
"""

from __future__ import annotations

import json
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


def _forms(secret: str) -> set[str]:
    """The secret as a reply may carry it: as is, without a leading 'Bearer ', JSON-escaped ('\\/' too)."""
    forms = {secret, secret[7:] if secret[:7].lower() == "bearer " else secret}
    forms |= {json.dumps(form)[1:-1] for form in forms}
    forms |= {form.replace("/", "\\/") for form in forms}
    return {form for form in forms if len(form) >= 6}


def secrets() -> list[str]:
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and v and len(v) >= 6} | _extra
    forms = set().union(*map(_forms, found))
    return sorted(forms, key=len, reverse=True)  # longest first: a key containing another


def _cut(text: str, secret: str) -> str:
    """`text` without a piece of `secret` that a slice left at its end (the head) or its start (the tail)."""
    shortest = min(8, max(4, len(secret) // 2))
    for size in range(len(secret) - 1, shortest - 1, -1):
        if text.endswith(secret[:size]):
            text = text[:-size] + MARK
            break
    for size in range(len(secret) - 1, shortest - 1, -1):
        if text.startswith(secret[-size:]):
            return MARK + text[size:]
    return text


def redact(text: str) -> str:
    known = secrets()
    for secret in known:
        if secret in text:
            text = text.replace(secret, MARK)
    for secret in known:
        text = _cut(text, secret)
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
