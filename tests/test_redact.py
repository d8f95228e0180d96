"""Credentials never leave the process: URL and free-text redaction."""

from __future__ import annotations

import pytest

from daemon.redact import is_sensitive_param, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://user:pass@host/stream", "rtsp://***@host/stream"),
        ("rtsp://user:pass@host:8554/live/1", "rtsp://***@host:8554/live/1"),
        ("rtsp://admin@10.0.0.1/", "rtsp://***@10.0.0.1/"),  # a user name alone is identifying
        ("rtsp://u:p%40ss@host/x", "rtsp://***@host/x"),  # encoded '@'
        ("rtsp://u:p@ss@host/x", "rtsp://***@host/x"),  # unencoded '@' as people type it
        ("rtsp://u:@host", "rtsp://***@host"),
        ("rtsp://user:pass@[::1]:554/s", "rtsp://***@[::1]:554/s"),
        ("RTSPS://U:P@Host/s", "RTSPS://***@Host/s"),
        ("http://h/a.m3u8?token=abc&x=1", "http://h/a.m3u8?token=***&x=1"),
        ("http://h/a?password=s&pass=t&pwd=u&key=v&auth=w&signature=x",
         "http://h/a?password=***&pass=***&pwd=***&key=***&auth=***&signature=***"),
        ("https://b.s3/v.mp4?X-Amz-Credential=AK&X-Amz-Signature=ff&X-Amz-Date=2024",
         "https://b.s3/v.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=2024"),
        ("http://h/a?access_token=abc&api_key=k&client_secret=c",
         "http://h/a?access_token=***&api_key=***&client_secret=***"),
        ("http://h/a?TOKEN=abc", "http://h/a?TOKEN=***"),
        ("http://h/a?token=", "http://h/a?token="),  # nothing to hide
        ("http://h/a?x=1#access_token=abc", "http://h/a?x=1#access_token=***"),
        # A raw '#' may sit inside the token ("abc#frag"): the fragment after it is masked too.
        ("http://h/a?t=1&token=abc#frag", "http://h/a?t=1&token=***#***"),
        ("http://h/a?token=abc&t=1#frag", "http://h/a?token=***&t=1#frag"),
        ("http://u:p@h/a?sig=1", "http://***@h/a?sig=***"),
        # No credentials: unchanged, byte for byte.
        ("rtsp://10.0.0.1:554/Streaming/Channels/101", "rtsp://10.0.0.1:554/Streaming/Channels/101"),
        ("http://h/a?monkey=1&keyframe=2&tokens_used=3", "http://h/a?monkey=1&keyframe=2&tokens_used=3"),
        ("rtsp://h/path/with@sign", "rtsp://h/path/with@sign"),  # '@' in the path is no userinfo
        ("/var/video/cam1.mp4", "/var/video/cam1.mp4"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("name", "sensitive"),
    [("password", True), ("Pass", True), ("PWD", True), ("token", True), ("key", True),
     ("auth", True), ("signature", True), ("X-Amz-Signature", True), ("access_token", True),
     ("apiKey", True), ("client-secret", True), ("width", False), ("keyframe", False),
     ("channel", False), ("subtype", False)],
)
def test_sensitive_param_names(name: str, sensitive: bool) -> None:
    assert is_sensitive_param(name) is sensitive


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # What FFmpeg/PyAV actually echo.
        ("[Errno 111] Connection refused: 'rtsp://admin:hunter2@127.0.0.1:8554/cam'",
         "[Errno 111] Connection refused: 'rtsp://***@127.0.0.1:8554/cam'"),
        ('Error opening input "rtsp://u:p@h/s?token=abc": Server returned 401 Unauthorized',
         'Error opening input "rtsp://***@h/s?token=***": Server returned 401 Unauthorized'),
        ("rtsp://u:p@h/s?token=abc: Connection timed out",
         "rtsp://***@h/s?token=***: Connection timed out"),
        ("two: rtsp://a:b@h1/x and http://c:d@h2/y.",
         "two: rtsp://***@h1/x and http://***@h2/y."),
        ("(rtsp://a:b@h/x)", "(rtsp://***@h/x)"),
        ("[rtsp @ 0x55d0c] method DESCRIBE failed: 404 Not Found",
         "[rtsp @ 0x55d0c] method DESCRIBE failed: 404 Not Found"),
        ("bad login admin:s3cret@cam.local:554", "bad login ***@cam.local:554"),
        ("password=s3cret token: abc", "password=*** token: ***"),
        ("missing key: streams", "missing key: streams"),
        ("no url here", "no url here"),
        ("", ""),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redaction_is_idempotent() -> None:
    for s in ("rtsp://u:p@h/s?token=abc", "oops rtsp://u:p@h/ password=x"):
        once = redact_text(s)
        assert redact_text(once) == once
        assert redact_url(redact_url(s)) == redact_url(s)


def test_redactors_never_raise() -> None:
    for bad in ("http://[::1", "rtsp://%zz@@@", "\x00\udcff://a:b@c", "?" * 10000):
        redact_url(bad)
        redact_text(bad)
    assert redact_text(12345) == "12345"  # type: ignore[arg-type]


def test_pair_after_a_colon_word_is_redacted() -> None:
    # "failed: password=pw1" once matched as the pair (failed, password=pw1) and leaked.
    from daemon.redact import redact_text

    assert redact_text("open failed: password=pw1") == "open failed: password=***"
    assert redact_text("missing key: streams") == "missing key: streams"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Quotes and brackets in a userinfo: the URL does not end there (issue 10 review).
        ('rtsp://:"q@10.0.0.1/cam', "rtsp://***@10.0.0.1/cam"),
        ("rtsp://:q}@host/cam", "rtsp://***@host/cam"),
        ("Error opening input 'rtsp://u:p(x)@h:554/a': refused", "Error opening input 'rtsp://***@h:554/a': refused"),
        ("rtsp://u:[q]@[::1]:554/s", "rtsp://***@[::1]:554/s"),
        ("<rtsp://a:<b>@h/x>", "<rtsp://***@h/x>"),
        ("rtsp://a:b c@host/x and http://x:y@z/", "rtsp://***@host/x and http://***@z/"),
        # Prose after a URL without credentials is left alone.
        ("opening rtsp://cam/x failed; mail admin@example.com", "opening rtsp://cam/x failed; mail admin@example.com"),
        ("rtsp://cam failed for admin@example.com", "rtsp://cam failed for admin@example.com"),
        ("rtsp://cam/a\nuser:x@y", "rtsp://cam/a\n***@y"),
    ],
)
def test_any_character_in_a_userinfo_inside_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
