"""Credentials out of everything shown: store URLs in ``repr``, status, logs and errors.

``redact_url("redis://app:s3cret@db:6379/0")`` is ``"redis://app:***@db:6379/0"``; a user
name alone (``redis://token@db``) and query values whose names look secret (``password``,
``token``, ``key``...) become ``***`` too. ``redact_text`` removes the same secrets from any
text, such as a driver's error message that repeats the URL.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

MASK = "***"
_SECRET_QUERY = re.compile(r"pass|secret|token|key|auth|cred", re.IGNORECASE)
_USERINFO = re.compile(r"(?<=//)[^/@?#]*@")


def _secrets(url: str) -> list[str]:
    """The credential strings in ``url`` (raw and percent-decoded), longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:
        match = _USERINFO.search(url)
        return [match.group(0)[:-1]] if match else []
    found = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        found += [password] if password else [user]
    found += [value for name, value in parse_qsl(parts.query, keep_blank_values=True)
              if _SECRET_QUERY.search(name) and value]
    out = {s for s in found if s} | {unquote(s) for s in found if s} | {quote(s, safe="") for s in found if s}
    return sorted(out, key=len, reverse=True)


def redact_url(url: str) -> str:
    """``url`` with its password (or lone user name) and secret-looking query values masked."""
    if not isinstance(url, str):
        return repr(url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user, sep, password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}" if sep and password else f"{MASK}@{host}" if user and not sep \
                else f"{user}{sep}@{host}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(n, MASK if _SECRET_QUERY.search(n) and v else v) for n, v in pairs],
                              safe="*")
        out = url
        if netloc != parts.netloc:
            out = out.replace("//" + parts.netloc, "//" + netloc, 1)
        if query != parts.query:
            out = out.replace("?" + parts.query, "?" + query, 1)
        return out
    except ValueError:
        return _USERINFO.sub(f"{MASK}@", url)


def redact_text(text: str, url: str) -> str:
    """``text`` with every credential of ``url`` (and ``url`` itself) masked."""
    if not isinstance(url, str) or not url:
        return text
    text = text.replace(url, redact_url(url))
    for secret in _secrets(url):
        text = text.replace(secret, MASK)
    return text
