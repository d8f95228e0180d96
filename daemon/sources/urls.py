"""Stream URLs: split them the way FFmpeg does, and say what FFmpeg cannot parse.

FFmpeg (``av_url_split`` in libavformat) ends the authority part of ``scheme://user:pass@host``
at the first ``/``, ``?`` or ``#``, takes everything up to the last ``@`` before that as the
credentials, and percent-decodes them before authenticating (``ff_urldecode``). So a password
with a raw ``/ ? #`` cuts the URL in the wrong place (the camera is never reached, or a wrong
host is), a raw ``%`` followed by two hex digits is decoded into another character, and a raw
``@`` or ``:`` works in FFmpeg by luck but in no other tool (RFC 3986 reserves them). Such a
URL is a configuration problem: :func:`url_problems` names it and shows the fix (percent-encode
the user name and password), without ever showing the password itself.

Pure string code: no FFmpeg, no network (``check-config`` must not fetch anything).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["SplitUrl", "split_url", "url_problems", "url_secrets", "encode_userinfo", "host_of",
           "register_url", "check_input_format", "check_options"]

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# What may follow the credentials' "@": a host name, an IPv4 or a bracketed IPv6, an optional
# port, then the path, the query, the fragment or the end.
_HOST_AFTER_AT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+(?:%[\w.~-]+)?\]|[\w.~%!$&'()*+,;=-]*)(?::[0-9]*)?(?=[/?#]|$)")
# Characters that must be percent-encoded inside user name and password (RFC 3986 "userinfo"
# allows unreserved, sub-delims, ":" between user and password, and %XX).
_RESERVED_IN_USERINFO = "/?#@[]"
_PCT_OK = re.compile(r"%[0-9A-Fa-f]{2}")
# A live scheme not followed by "://": a typo that would make the URL a local file name.
_SCHEME_TYPO = re.compile(r"^\s*(rtsps?|rtmps?|https?|srt|udp|tcp)(?::/?(?!/)|//|:\\\\|:\\)", re.I)
_LIVE = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")


@dataclass(frozen=True, slots=True)
class SplitUrl:
    """``scheme://userinfo@host:port/rest``; ``userinfo`` is None without credentials."""

    scheme: str
    userinfo: str | None
    hostport: str
    rest: str  # path, query and fragment, from the first "/", "?" or "#" on (may be "")


def split_url(url: str) -> SplitUrl | None:
    """Split a ``scheme://`` URL as its author meant it: the credentials end at the *last* "@"
    that is followed by a host name and a path/query/end (so a raw ``/ ? # @`` in a password is
    still seen as part of the password). None for a string without ``scheme://``."""
    m = _SCHEME.match(url)
    if not m:
        return None
    rest = url[m.end():]
    userinfo: str | None = None
    for at in reversed([i for i, ch in enumerate(rest) if ch == "@"]):
        cand = rest[:at]
        cut = min((p for p in (cand.find(c) for c in "/?#") if p >= 0), default=-1)
        if cut >= 0 and ":" not in cand[:cut]:
            break  # "host/path@x": an "@" in the path, not credentials ("user:pa/ss@host" has a ":")
        if _HOST_AFTER_AT.match(rest[at + 1:]):
            userinfo, rest = rest[:at], rest[at + 1:]
            break
    end = len(rest)
    for ch in "/?#":
        pos = rest.find(ch)
        if pos >= 0:
            end = min(end, pos)
    return SplitUrl(m.group("scheme").lower(), userinfo, rest[:end], rest[end:])


def host_of(url: str) -> str | None:
    """The host name (or IP literal, without brackets) of a URL, or None."""
    s = split_url(url)
    if s is None or not s.hostport:
        return None
    hp = s.hostport
    if hp.startswith("["):
        return hp[1:hp.find("]")] if "]" in hp else None
    return hp.rsplit(":", 1)[0] if ":" in hp else hp


def encode_userinfo(userinfo: str) -> str:
    """Percent-encode user name and password (split at the first ":"), keeping valid %XX."""
    user, sep, password = userinfo.partition(":")

    def enc(part: str) -> str:
        # Keep what is already percent-encoded; encode everything else that is not unreserved.
        out, i = [], 0
        for m in _PCT_OK.finditer(part):
            out.append(quote(part[i:m.start()], safe="!$&'()*+,;="))
            out.append(m.group(0))
            i = m.end()
        out.append(quote(part[i:], safe="!$&'()*+,;="))
        return "".join(out)

    return enc(user) + (sep + enc(password) if sep else "")


def _masked(s: SplitUrl) -> str:
    from daemon.redact import redact_url

    rest = s.rest.split("#", 1)[0] + ("#***" if "#" in s.rest else "")  # a fragment may hold a secret's tail
    return redact_url(f"{s.scheme}://***@{s.hostport}{rest}" if s.userinfo is not None
                      else f"{s.scheme}://{s.hostport}{rest}")


def url_problems(url: str) -> list[str]:
    """What FFmpeg would misread in a live-source URL, each with its fix; [] when fine.

    Never repeats the password: the URL is shown with the credentials as ``***``.
    """
    stripped = url.strip()
    if stripped != url and _SCHEME.match(stripped):
        return ["the URL starts or ends with whitespace; remove it"] + url_problems(stripped)
    s = split_url(url)
    if s is None:
        m = _SCHEME_TYPO.match(url)
        if m:  # "rtsp:/cam", "rtsp//cam", "http:\\cam": otherwise read as a local file name
            return [f"malformed URL: it starts with {m.group(0)!r}; write {m.group(1).lower()}://host/path"]
        return []
    if s.scheme not in _LIVE:
        return []
    problems: list[str] = []
    masked = _masked(s)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        problems.append("the URL contains a space or a control character; percent-encode it (%20 for a space)")
    if s.userinfo is not None:
        bad = sorted({ch for ch in s.userinfo.replace(":", "", 1) if ch in _RESERVED_IN_USERINFO})
        raw_pct = "%" in _PCT_OK.sub("", s.userinfo)
        non_ascii = any(ord(ch) > 127 for ch in s.userinfo)
        if bad or raw_pct or non_ascii:
            what = []
            if bad:
                what.append(" ".join(f"{c!r} (write {quote(c, safe='')})" for c in bad))
            if raw_pct:
                what.append("a '%' not followed by two hex digits (write %25)")
            if non_ascii:
                what.append("non-ASCII characters (write their UTF-8 bytes as %XX)")
            problems.append(
                "the user name or password contains " + ", ".join(what)
                + "; FFmpeg cannot parse it raw. Percent-encode the user name and the password: "
                + _masked(s).replace("://***@", "://USER:PASSWORD@", 1) + " with each encoded, e.g. by "
                + "python3 -c 'import urllib.parse,getpass; print(urllib.parse.quote(getpass.getpass(), safe=\"\"))'")
        elif s.userinfo == "":
            problems.append(f"empty credentials before '@' ({masked}): remove the '@' or add user:password")
    if "#" in s.rest:
        # FFmpeg never sends a fragment to the server: a raw "#" in a path or a query token
        # silently cuts it there (an encoded one, %23, is sent).
        problems.append("the URL has a '#' after the host, which FFmpeg never sends to the server; "
                        f"if it belongs to a path, token or password, write it as %23 ({masked})")
    hp = s.hostport
    if hp.startswith("["):
        if "]" not in hp:
            problems.append(f"unbalanced '[' in the host ({masked})")
    elif hp.count(":") > 1:
        problems.append(f"an IPv6 address must be in brackets, e.g. {s.scheme}://[::1]:554/... ({masked})")
    elif not hp or hp.startswith(":"):
        problems.append(f"no host name in the URL ({masked})")
    port = hp.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in hp.rsplit("]", 1)[-1] else None
    if port is not None and port != "" and (not port.isdigit() or int(port) > 65535):
        problems.append(f"port {port!r} is not a number from 0 to 65535 ({masked})")
    return problems


def url_secrets(url: str) -> list[str]:
    """The strings of ``url`` that are secrets, in every form they may be printed in (raw,
    percent-decoded, percent-encoded): the password and the whole userinfo, and the values of
    credential-like query parameters. For :func:`daemon.redact.register_secrets`."""
    from daemon.redact import is_sensitive_param

    out: set[str] = set()
    s = split_url(url)
    if s is None:
        return []
    if s.userinfo:
        _user, sep, password = s.userinfo.partition(":")
        for v in (s.userinfo, password if sep else ""):
            if v:
                out.update({v, unquote(v), quote(unquote(v), safe=""), encode_userinfo(v)})
    q = s.rest.find("?")
    if q >= 0:
        query = s.rest[q + 1:].split("#", 1)[0]
        for pair in re.split(r"[&;]", query):
            name, eq, value = pair.partition("=")
            if eq and value and is_sensitive_param(unquote(name)):
                out.update({value, unquote(value), quote(unquote(value), safe="")})
    return sorted(v for v in out if v)


def register_url(url: str) -> None:
    """Register the secrets of ``url`` with the redactor (:func:`daemon.redact.register_secrets`)."""
    from daemon.redact import register_secrets

    s = split_url(url)
    userinfo = s.userinfo if s is not None else None
    whole: set[str] = set()
    if userinfo and userinfo.partition(":")[2]:  # a password: the userinfo is a secret, any length
        whole = {userinfo, unquote(userinfo), quote(unquote(userinfo), safe=":"),
                 encode_userinfo(userinfo)}
    register_secrets(url_secrets(url), any_length=whole)


# Names people copy from an ``ffmpeg`` command line into ``options`` that are not demuxer or
# protocol options: FFmpeg ignores unknown keys silently, so the stream would run without them.
# (``-f`` is ``av.open(format=)`` in PyAV, i.e. ``streams[].format``.)
_CLI_ONLY_OPTIONS = {
    "f": "the input format has its own key, `format: {value}` next to `options`",
    "format": "the input format has its own key, `format: {value}` next to `options`",
    "stimeout": "FFmpeg 5 renamed it `timeout` (microseconds); detectd sets it from stall_timeout",
    "re": "a command-line flag; `realtime: true` paces a file at its own rate",
    "hwaccel": "a command-line option; `decode:` chooses the decoder",
    "i": "the input is `url`",
    "c:v": "a command-line option; the decoder is chosen from the stream",
    "vcodec": "a command-line option; the decoder is chosen from the stream",
    "ss": "a command-line option (seek); not supported for sources",
}


def check_input_format(name: str | None) -> str | None:
    """``name`` if FFmpeg has a demuxer of that name (``ffmpeg -formats``, "D" column), else
    ValueError naming a few close ones."""
    if name is None:
        return None
    name = name.strip()
    import av

    try:
        av.format.ContainerFormat(name, "r")
    except (ValueError, av.FFmpegError):
        import difflib

        demuxers = sorted(f for f in av.formats_available if _is_demuxer(f))
        close = difflib.get_close_matches(name, demuxers, n=4, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"FFmpeg has no input format {name!r}{hint}; `ffmpeg -demuxers` lists them, "
                         "e.g. mjpeg, mpjpeg, h264, hevc, rtsp, mpegts") from None
    return name


def _is_demuxer(name: str) -> bool:
    import av

    try:
        av.format.ContainerFormat(name, "r")
        return True
    except Exception:
        return False


def check_options(options: dict[str, str]) -> dict[str, str]:
    """Reject ``ffmpeg`` command-line names (``f``, ``stimeout``, ``re``...) in ``options``:
    FFmpeg would ignore them silently. The message names the key to use instead."""
    bad = [k for k in options if k.lstrip("-") in _CLI_ONLY_OPTIONS]
    if bad:
        raise ValueError("; ".join(
            f"{k!r} is not a demuxer option (FFmpeg would ignore it): "
            + _CLI_ONLY_OPTIONS[k.lstrip("-")].format(value=options[k]) for k in bad))
    return options
