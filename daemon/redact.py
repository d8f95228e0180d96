"""Remove credentials from stream URLs and from any text that may echo them.

Stream URLs routinely carry secrets (``rtsp://admin:hunter2@cam/...``, signed HTTP URLs with
``?token=...``). FFmpeg repeats the URL in its error messages, so everything that leaves the
process -- log lines, ``events/<id>/`` messages, the ``last_error`` of a stream -- goes through
:func:`redact_text` first. Metric labels never carry URLs at all (they use the stream id).

Two layers, so that no URL shape defeats them:

1. Structure: the userinfo of every ``scheme://`` URL is masked, split the way its author meant
   it (up to the *last* ``@`` followed by a host, see :func:`daemon.sources.urls.split_url`), so a
   raw ``# / ? @ :`` in a password is masked too, and inside text whatever the userinfo holds
   (quotes, brackets, spaces: :func:`_mask_userinfo_in_text`); credential-like query
   parameters are masked.
2. Known secrets: every stream URL of the configuration registers its password, its userinfo and
   its secret query values, raw, percent-decoded and percent-encoded
   (:func:`register_secrets`, called when a config is validated); :func:`redact_text` replaces
   any occurrence of them, wherever it appears (inside a quote, after a space, in FFmpeg's own
   words). Values shorter than :data:`MIN_SECRET_LEN` are left to layer 1 (masking every "a"
   in a message would make it unreadable), except a whole ``user:password`` userinfo with a
   non-empty password, registered at any length (``:q}`` is no ordinary word).

The functions are total: they never raise, whatever the input, because they sit on error paths.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

__all__ = ["MASK", "SENSITIVE_PARAMS", "redact_url", "redact_text", "is_sensitive_param",
           "register_secrets", "MIN_SECRET_LEN"]

MASK = "***"
MIN_SECRET_LEN = 4

_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()


def register_secrets(values: Iterable[str], *, any_length: Iterable[str] = ()) -> None:
    """Remember strings that must never be printed (see the module doc, layer 2).

    ``values`` shorter than :data:`MIN_SECRET_LEN` are ignored; ``any_length`` are kept whatever
    their length (a whole ``user:password`` userinfo: rare enough in ordinary words, and the
    only trace of a short password once the URL around it is cut)."""
    global _secrets_re
    new = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LEN and v != MASK}
    new |= {v for v in any_length if isinstance(v, str) and v and v != MASK}
    if not new - _secrets:
        return
    with _secrets_lock:
        _secrets.update(new)
        # Longest first: a userinfo is replaced whole before the password inside it.
        _secrets_re = re.compile("|".join(re.escape(v) for v in sorted(_secrets, key=len, reverse=True)))


def _redact_known(text: str) -> str:
    pattern = _secrets_re
    return pattern.sub(MASK, text) if pattern is not None else text

# Query parameter names (compared case-insensitively, after stripping "-", "_" and ".") whose
# values are secrets, plus any compound name whose *last word* is one of the suffixes below
# (``x-amz-signature``, ``access_token``, ``api_key``, ``clientSecret``; not ``monkey``).
SENSITIVE_PARAMS = frozenset(
    {
        "password", "passwd", "pass", "pwd", "pw", "secret", "token", "key", "auth",
        "authorization", "signature", "sig", "credential", "credentials", "session",
        "sessionid", "apikey", "accesstoken", "refreshtoken", "clientsecret", "privatekey",
        "xamzsignature", "xamzcredential", "xamzsecuritytoken", "googsignature",
        "googcredential", "jwt", "bearer", "cookie", "user", "username", "login",
        "passphrase", "streamkey",
    }
)
_SENSITIVE_SUFFIXES = frozenset(
    {"password", "passwd", "pass", "pwd", "secret", "token", "key", "signature", "sig", "credential",
     "passphrase"}
)


def _norm(name: str) -> str:
    return re.sub(r"[-_.\s]", "", name).lower()


def is_sensitive_param(name: str) -> bool:
    """True when a query parameter named ``name`` carries a credential."""
    if _norm(name) in SENSITIVE_PARAMS:
        return True
    # The last word of a compound name: api_key, X-Amz-Signature, clientSecret (not "monkey").
    words = re.split(r"[-_.\s]|(?<=[a-z])(?=[A-Z])", name)
    return bool(words) and words[-1].lower() in _SENSITIVE_SUFFIXES


# A query string parameter: name, "=", value up to the next separator.
_PARAM = re.compile(r"(?P<sep>^|[?&;])(?P<name>[^=&;#?\s]+)=(?P<value>[^&;#\s]*)")


def _redact_query(query: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if is_sensitive_param(m.group("name")) and m.group("value"):
            return f"{m.group('sep')}{m.group('name')}={MASK}"
        return m.group(0)

    return _PARAM.sub(sub, query)


# scheme://[userinfo@]rest. Userinfo is everything up to the LAST "@" before the path starts:
# passwords may contain "@" (unencoded, as people type them) and ":" and "/"... but we cannot
# know where an unencoded "/" in a password ends, so only "@" is tolerated inside userinfo.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")


def redact_url(url: str) -> str:
    """Return ``url`` with its userinfo and credential-like query parameters masked.

    ``rtsp://user:pass@host:554/path?token=abc&x=1`` -> ``rtsp://***@host:554/path?token=***&x=1``.
    A URL without credentials comes back unchanged (byte for byte), as do file paths.
    """
    try:
        return _redact_url(url)
    except Exception:  # never let a redactor raise on an error path; fail closed
        return MASK


def _redact_url(url: str) -> str:
    from daemon.sources.urls import split_url

    url = _redact_known(url)
    s = split_url(url)
    if s is not None and s.userinfo is not None:
        url = url[: url.index("://") + 3] + f"{MASK}@" + s.hostport + s.rest
    out = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", url, count=1)
    qpos = out.find("?")
    if qpos >= 0:
        hpos = out.find("#", qpos)
        query, frag = (out[qpos + 1 :], "") if hpos < 0 else (out[qpos + 1 : hpos], out[hpos:])
        last = _PARAM.findall(query)[-1:] if frag else []
        if last and last[0][2] and is_sensitive_param(last[0][1]):
            frag = f"#{MASK}"  # a raw "#" inside the token: what follows may be the rest of it
        out = out[: qpos + 1] + _redact_query(query) + frag
    # Fragments sometimes carry tokens too (OAuth implicit flow: #access_token=...).
    hpos = out.find("#")
    if hpos >= 0 and "=" in out[hpos:]:
        out = out[: hpos + 1] + _redact_query(out[hpos + 1 :])
    return out


# A URL inside free text: scheme://, then anything up to whitespace or a quote/bracket that
# commonly delimits URLs in messages (FFmpeg writes `Error opening input 'rtsp://...'`).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")
# "user:pass@host" without a scheme (seen in some FFmpeg/ffprobe messages and in configs).
_BARE_USERINFO = re.compile(r"(?<![\w/@*])([\w.~%!$&+,;=-]+):([^\s@/'\"]+)@(?=[\w.-]+[:/\s]|[\w.-]+$)")
# key=value pairs outside URLs ("password=secret" in a message).
# Only the credential names are matched (not any word before a colon), so that a preceding
# "failed: password=x" cannot swallow the pair into a harmless-looking match.
_KV_IN_TEXT = re.compile(
    r"(?P<name>(?<![\w.-])(?:password|passwd|passphrase|pwd|secret|token|access[-_.]?token|api[-_.]?key|signature))"
    r"(?P<eq>\s*[=:]\s*)(?P<value>[^\s&;,'\"]+)", re.IGNORECASE)


def _redact_url_match(m: re.Match[str]) -> str:
    # Sentence punctuation right after a URL ("...?token=abc: Connection refused") belongs to
    # the message, not to the URL: keep it out of the value that gets masked.
    url = m.group(0)
    stripped = url.rstrip(".,:;!?")
    return redact_url(stripped) + url[len(stripped) :]


# What may follow the credentials' "@" inside text: a host name, an IPv4 or a bracketed IPv6,
# an optional port, then anything that cannot continue a host name (a quote, a space, "/").
_HOST_IN_TEXT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[\w.~%-]+)(?::[0-9]+)?(?![\w.~%-])")
_SCHEME_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _mask_userinfo_in_text(text: str) -> str:
    """Layer 1 for URLs inside text: for each ``scheme://``, mask everything up to the *last*
    "@" that is followed by a host, whatever characters lie before it (quotes, brackets,
    spaces: a password may hold any of them, and FFmpeg quotes URLs with ``'``). The search
    stops at the next ``scheme://`` and at a line break; an "@" after a "/ ? #" is in a path
    unless a ":" came before (as in :func:`daemon.sources.urls.split_url`)."""
    out: list[str] = []
    pos = 0
    starts = [m.end() for m in _SCHEME_IN_TEXT.finditer(text)]
    for i, start in enumerate(starts):
        if start < pos:
            continue
        newline = text.find("\n", start)
        limit = min(starts[i + 1] if i + 1 < len(starts) else len(text),
                    newline if newline >= 0 else len(text))
        window = text[start:limit]
        for at in reversed([j for j, ch in enumerate(window) if ch == "@"]):
            cand = window[:at]
            cut = min((p for p in (cand.find(c) for c in "/?#") if p >= 0), default=-1)
            if cut >= 0 and ":" not in cand[:cut]:
                break  # "host/path@x": an "@" in the path, not credentials
            if any(ch.isspace() for ch in cand) and ":" not in re.split(r"\s", cand, 1)[0]:
                continue  # "cam failed for admin@example.com": prose, not a user name
            if _HOST_IN_TEXT.match(window, at + 1):
                out.append(text[pos:start] + MASK)
                pos = start + at
                break
    out.append(text[pos:])
    return "".join(out)


def redact_text(text: str) -> str:
    """Redact every URL with credentials (and ``password=...``-style pairs) inside ``text``."""
    try:
        out = _mask_userinfo_in_text(_redact_known(str(text)))
        out = _URL_IN_TEXT.sub(_redact_url_match, out)
        out = _BARE_USERINFO.sub(f"{MASK}@", out)

        def kv(m: re.Match[str]) -> str:
            if not m.group("value").startswith(MASK) and _norm(m.group("name")) in _TEXT_KEYS:
                return f"{m.group('name')}{m.group('eq')}{MASK}"
            return m.group(0)

        return _KV_IN_TEXT.sub(kv, out)
    except Exception:
        return MASK


# In free text only the unambiguous names are masked: "key: value" or "user: x" in an ordinary
# message (e.g. "missing key: streams") must survive.
_TEXT_KEYS = frozenset({"password", "passwd", "passphrase", "pwd", "secret", "token", "accesstoken", "apikey",
                        "signature"})
