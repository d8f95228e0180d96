"""No secret reaches a log line, an event, a label or check-config's output, whatever the URL.

Every printable special character (and non-ASCII ones) in the user name and in the password,
written raw and percent-encoded; query-string tokens; FFmpeg's own log lines routed through our
logger; and a real daemon whose streams fail in several ways with such URLs, read on ZeroMQ,
/metrics and its log.
"""

from __future__ import annotations

import http.server
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from daemon.config import ConfigError, parse_config
from daemon.redact import redact_text, redact_url
from tests.harness import free_port
from tests.support.messages import events_of
from tests.support.secrets import SPECIALS, forms
from tests.support.sources import Error503, check_config

ROOT = Path(__file__).resolve().parents[1]
def register(url: str) -> None:
    try:  # the validator registers the secrets before it judges the URL
        parse_config({"streams": [{"id": "s", "url": url}]})
    except ConfigError:
        pass


def messages(url: str) -> list[str]:
    """How URLs show up in messages: FFmpeg's quotes, PyAV's OSError text, bare, in a repr."""
    return [f"Error opening input '{url}': Connection refused",
            f"[Errno 111] Connection refused: '{url}'",
            f"opening {url} failed", repr({"url": url}), f'"{url}"', f"url={url};next"]


@pytest.mark.parametrize("char", SPECIALS, ids=[f"U+{ord(c):04X}" for c in SPECIALS])
@pytest.mark.parametrize("where", ["password", "user"])
@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "encoded"])
def test_special_character_in_credentials_is_never_printed(char: str, where: str, encoded: bool) -> None:
    password = f"Pw{char}x9Secret"
    user = f"ad{char}min" if where == "user" else "admin"
    enc = (lambda s: quote(s, safe="")) if encoded else (lambda s: s)
    url = f"rtsp://{enc(user)}:{enc(password)}@cam.example:554/live?channel=1"
    register(url)
    for text in messages(url) + [url]:
        out = redact_text(text)
        for f in forms(password) | {f"{user}:{password}", f"{enc(user)}:{enc(password)}"}:
            assert f not in out, (text, out)
        assert "cam.example" in out  # the host stays readable
    assert all(f not in redact_url(url) for f in forms(password))


@pytest.mark.parametrize("char", [c for c in SPECIALS if c not in "'\" <>()[]{}\u00a0"],
                         ids=lambda c: f"U+{ord(c):04X}")
def test_structure_alone_masks_a_raw_special_password(char: str) -> None:
    """Without the registry (a URL seen for the first time), the userinfo is still found."""
    password = f"Zq{char}7unregistered{ord(char)}"
    url = f"rtsp://admin:{password}@10.0.0.7:554/live"
    for text in messages(url):
        out = redact_text(text)
        assert password not in out and quote(password, safe="") not in out, out


@pytest.mark.parametrize("query", ["token=Tok3nValue99", "password=Pa55wordValue", "access_token=Acc3ssValue",
                                   "X-Amz-Signature=Sig9Value77", "api_key=ApiK3yValue", "auth=Au7hValue",
                                   "passphrase=SrtPhrase123"])
def test_query_string_tokens_are_never_printed(query: str) -> None:
    url = f"https://cam.example/mjpeg?res=hd&{query}&x=1"
    register(url)
    secret = query.split("=", 1)[1]
    for text in messages(url):
        out = redact_text(text)
        assert secret not in out and "res=hd" in out, out


def test_ffmpeg_log_lines_routed_to_our_logger_are_redacted(tmp_path: Path) -> None:
    """FFmpeg repeats URLs in its own log; when PyAV routes that log into Python logging, the
    handler's filter must redact it (the daemon leaves FFmpeg's log off, PyAV's default)."""
    port = free_port()
    script = f"""
import logging, av, av.logging
from daemon.logs import setup_logging
from daemon.config import parse_config
url = "rtsp://admin:Pw%23Logged9@127.0.0.1:{port}/cam?token=Tok3nLogged"
parse_config({{"streams": [{{"id": "s", "url": url}}]}})
setup_logging("DEBUG")
av.logging.set_level(av.logging.DEBUG)
try:
    av.open(url, options={{"rtsp_transport": "tcp", "timeout": "1000000"}}, timeout=(2, 2))
except Exception as exc:
    logging.getLogger("daemon.test").error("open failed: %s", exc)
"""
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert " libav." in out, out  # FFmpeg's own lines came through our logger
    for secret in ("Pw%23Logged9", "Pw#Logged9", "Tok3nLogged"):
        assert secret not in out, out


def test_daemon_never_publishes_logs_or_labels_a_secret(run_daemon: Any, tmp_path: Path) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Error503)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    secrets = {"refused": "Pw#:/?@[]!$&'()*+,;= x", "resolve": "Pw\u00e9\u5bc6Unicode", "http": "Pw%41%zzLit"}
    fast = {"open_timeout": 2, "backoff_base": 0.2, "backoff_cap": 1}
    streams = [
        {"id": "refused", "url": f"rtsp://ad%40min:{quote(secrets['refused'], safe='')}@127.0.0.1:{free_port()}/cam", **fast},
        {"id": "resolve", "url": f"rtsp://user:{quote(secrets['resolve'], safe='')}@no-such-camera.invalid/cam", **fast},
        {"id": "http", "url": f"http://u:{quote(secrets['http'], safe='')}@127.0.0.1:{httpd.server_address[1]}"
                              f"/video.mjpg?token=Tok3nHttp&password=Pa55Http", **fast},
    ]
    try:
        d = run_daemon(streams)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            d.collect(0.5)
            if all(len([e for e in events_of(d.messages, s["id"]) if e["event"] == "reconnecting"]) >= 2
                   for s in streams):
                break
        metrics = d.scrape()
        d.signal(signal.SIGTERM)
        d.collect_until_exit(30)
        log = d.log()
    finally:
        httpd.shutdown()
        httpd.server_close()
    published = "\n".join(repr(m) for _, m in d.messages)
    reasons = {s["id"]: [e.get("reason") for e in events_of(d.messages, s["id"]) if e["event"] == "reconnecting"]
               for s in streams}
    assert all(reasons.values()), reasons
    assert any("cannot resolve host no-such-camera.invalid" in r for r in reasons["resolve"]), reasons
    assert any("Server returned 5XX" in r for r in reasons["http"]), reasons
    assert any("Connection refused" in r for r in reasons["refused"]), reasons
    for text in (log, published, metrics):
        assert "Errno" not in text
        for s in list(secrets.values()) + ["Tok3nHttp", "Pa55Http"]:
            for f in forms(s):
                assert f not in text, (f, text[-3000:])


def test_check_config_output_never_shows_a_raw_password(tmp_path: Path) -> None:
    import yaml

    raw = ["Pw#raw1", "Pw/raw2", "Pw?raw3", "Pw@raw4", "Pw raw5", "Pw%zzraw6", "Pwé密raw7"]
    streams = [{"id": f"c{i}", "url": f"rtsp://admin:{p}@127.0.0.1:9/cam?token=Tok3n{i}"} for i, p in enumerate(raw)]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"streams": streams}, allow_unicode=True), encoding="utf-8")
    r = check_config(path)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert out.count("streams[") >= len(raw), out  # every stream reported in one run
    for i, p in enumerate(raw):
        assert all(f not in out for f in forms(p)), (p, out)
        assert f"Tok3n{i}" not in out


def test_raw_hash_in_a_query_token_is_rejected_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - id: cam\n    url: 'http://127.0.0.1:9/mjpeg?token=Tok3n#Tail99'\n")
    r = check_config(path)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "write it as %23" in out, out
    assert "Tok3n" not in out and "Tail99" not in out
    assert "Tail99" not in redact_text("GET http://127.0.0.1:9/mjpeg?token=Tok3n#Tail99 failed")


# Every ASCII punctuation character (quotes and brackets included), alone or among others, in a
# short password (below MIN_SECRET_LEN: only the structure and the whole-userinfo registry can
# catch it) and a long one, raw, in the user name too.
PUNCT = list(string.punctuation)


@pytest.mark.parametrize("char", PUNCT, ids=[f"U+{ord(c):04X}" for c in PUNCT])
@pytest.mark.parametrize("length", ["short", "long"])
@pytest.mark.parametrize("where", ["password", "user"])
def test_quotes_and_brackets_in_credentials_are_masked_in_text(char: str, length: str, where: str) -> None:
    secret = f"q{char}" if length == "short" else f"Lq{char}ng{char}Secret9"
    user, password = (secret, "Pw9x") if where == "user" else ("", secret)
    url = f"rtsp://{user}:{password}@10.0.0.1/cam"
    for registered in (False, True):
        if registered:
            register(url)
        for text in messages(url) + [url]:
            out = redact_text(text)
            assert password not in out.replace("***", ""), (registered, text, out)
            if where == "user" and char in "/?#":
                continue  # "rtsp://q?:Pw9x@...": for FFmpeg too the host is "q", the rest a path
            assert secret not in out.replace("***", ""), (registered, text, out)
            assert "10.0.0.1" in out, out


@pytest.mark.parametrize("url", ['rtsp://:"q@10.0.0.1/cam', "rtsp://:q}@host/cam", "rtsp://:'q@h/c",
                                 "rtsp://:q)@h/c", "rtsp://:[q]@h/c", "rtsp://:<q>@h/c"])
def test_short_punctuated_password_without_registry(url: str) -> None:
    """A URL seen for the first time: the userinfo is found from its structure alone."""
    password = url.split("://:", 1)[1].rsplit("@", 1)[0]
    for text in messages(url):
        out = redact_text(text)
        assert f":{password}@" not in out and "***@" in out, (text, out)


def test_short_userinfo_is_registered_when_it_has_a_password() -> None:
    """``:q}`` (3 characters) cut off from its URL is still masked once the URL is known."""
    register("rtsp://:q}@cam.example/live")
    assert ":q}" not in redact_text("authentication failed for ':q}'")
