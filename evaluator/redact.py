"""Known secrets never leave the process: whatever we store or print passes through `redact` first.

A secret is known when it is the value of an environment variable whose name says it is one (…KEY, …TOKEN,
…SECRET, …PASSWORD, the variable a profile names for its key) or the password of a URL we were given. A
server may echo it back in any form: whole, without the `Bearer ` a variable held, JSON-escaped, or cut by a
slice taken before the text came here (its head at the text's end, its tail at its start), URL-encoded,
base64-encoded, or in pieces: any run of `RUN` or more consecutive characters of one of these forms is redacted
wherever it appears (the key without its `sk-`, without its last characters, split by a newline). An
Authorization value (`Basic …`, `Bearer …`) is redacted whole. A masked form such as `sk-abc***xyz` holds no
secret and is kept as it is.
"""

from __future__ import annotations

import base64
import json
import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

MARK = "[redacted]"
RUN = 12  # this many consecutive characters of a secret are a piece of it; a masked `sk-abc***xyz` shows fewer
_GRAM = RUN // 2  # every run of RUN characters holds a whole block of _GRAM starting at a multiple of _GRAM
_AUTHORIZATION = re.compile(  # a credential (8+ characters, a digit or a symbol among them) after its scheme
    r"\b(Basic|Bearer)( +)(?=[A-Za-z0-9+=._-]*[0-9+=/_])(?:[A-Za-z0-9+=._-]|\\?/){8,}(?![A-Za-z0-9+=._*/-])")
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)($|_)", re.IGNORECASE)
_extra: set[str] = set()


def register(value: str | None) -> None:
    """Treat `value` as a secret from now on (short values would redact ordinary words, so they are not)."""
    if value and len(value) >= 6:
        _extra.add(value)


def _forms(secret: str) -> set[str]:
    """The secret as a reply may carry it: as is, without a leading 'Bearer ', URL- or base64-encoded,
    JSON-escaped ('\\/' too)."""
    forms = {secret, secret[7:] if secret[:7].lower() == "bearer " else secret}
    forms |= {quote(form, safe="") for form in forms} | {base64.b64encode(form.encode()).decode() for form in forms}
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


def _pieces(text: str, known: list[str]) -> str:
    """`text` with every run of at least RUN characters of a known secret replaced by MARK. Linear in the
    text: only the blocks of _GRAM characters at multiples of _GRAM are looked up, and a hit grows both ways
    along the secret it came from."""
    blocks: dict[str, list[tuple[str, int]]] = {}
    for secret in known:
        for at in range(len(secret) - _GRAM + 1):
            blocks.setdefault(secret[at:at + _GRAM], []).append((secret, at))
    spans = []
    for start in range(0, len(text) - _GRAM + 1, _GRAM):
        for secret, at in blocks.get(text[start:start + _GRAM], ()):
            left, back = start, at
            while left > 0 and back > 0 and text[left - 1] == secret[back - 1]:
                left, back = left - 1, back - 1
            right, ahead = start + _GRAM, at + _GRAM
            while right < len(text) and ahead < len(secret) and text[right] == secret[ahead]:
                right, ahead = right + 1, ahead + 1
            if right - left >= RUN:
                spans.append((left, right))
    if not spans:
        return text
    kept, end = [], 0
    for left, right in sorted(spans):
        if not kept or left > end:  # overlapping or touching pieces are one MARK
            kept += [text[end:left], MARK]
        end = max(end, right)
    return "".join(kept) + text[end:]


def redact(text: str) -> str:
    text = _AUTHORIZATION.sub(lambda m: f"{m[1]}{m[2]}{MARK}", text)
    known = secrets()
    if not known:
        return text
    for secret in known:
        if secret in text:
            text = text.replace(secret, MARK)
    text = _pieces(text, [secret for secret in known if len(secret) >= RUN])
    for secret in known:
        text = _cut(text, secret)
    return text


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^?#]*)@")  # up to the last '@' before a query


def strip_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(url without user:password@, user, password); the password and the base64 of `user:password` (what a
    Basic Authorization header carries) are registered as secrets. The userinfo runs to the last '@' before
    any query, so a password holding a raw '/' or '@' (which a URL parser reads as the path) is taken out too,
    unless what comes before the first '/' is a host[:port] (then the '@' is the path's). A user without a
    password is a token (`https://TOKEN@host`): registered too."""
    found = _USERINFO.match(url)
    if found is None:
        return url, None, None
    head = found[2].split("/", 1)[0]
    if "/" in found[2] and "@" not in head and (head.startswith("[") or re.fullmatch(r"[^:]*(:[0-9]*)?", head)):
        return url, None, None  # host[:port] and then a path holding an '@'
    user, colon, password = found[2].partition(":")
    register(password if colon else user)
    register(base64.b64encode(f"{user}:{password}".encode()).decode())
    url = found[1] + url[found.end():]
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # not a URL we can rebuild: without its credentials, as it was given
        return url, user, password if colon else None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    rebuilt = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return rebuilt, user, password if colon else None
