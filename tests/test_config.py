"""daemon/config.py as ``detectd check-config`` and ``detectd run`` read it: every problem is a
clear error naming its key path (or the file and line), reported all at once, exit 2, never a
traceback; duplicate YAML keys are errors at every nesting level and on every path that reads a
config (check-config, run, SIGHUP: see tests/test_e2e_reliability.py); stream URLs FFmpeg cannot
parse and misplaced demuxer options are named with the fix; check-config never fetches.

Config checks that belong to one subject live with it: stream timeouts in
tests/test_sources_timeouts.py, CURVE key files in tests/test_publish_client.py, analytics
geometry in tests/test_analytics.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.config import ConfigError, load_config
from daemon.yamlconf import load_yaml
from tests.harness import ROOT
from tests.support.sources import check_config

DATA = Path(__file__).with_name("data")


def detectd(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_field_case_11_check_config_names_key_and_line() -> None:
    """The second camera lost its '- ': two ids and two urls in one mapping (one camera gone)."""
    r = detectd("check-config", "--config", str(DATA / "duplicate_key.yaml"))
    assert r.returncode == 2, r
    assert ("line 5, column 5: duplicate key 'id' (already set at line 3 of the same mapping; "
            "did the next list item lose its '- '?)") in r.stderr, r.stderr
    assert "line 6, column 5: duplicate key 'url' (already set at line 4" in r.stderr, r.stderr
    assert "ok" not in r.stdout and "Traceback" not in r.stderr


def test_run_refuses_duplicate_keys_before_starting(tmp_path: Path) -> None:
    r = detectd("run", "--config", str(DATA / "duplicate_key.yaml"))
    assert r.returncode == 2, r
    assert "duplicate key 'id'" in r.stderr and "line 5" in r.stderr, r.stderr


@pytest.mark.parametrize("text, key, line", [
    ("model:\n  threads: 1\n  backend: onnxruntime\n  threads: 2\n", "threads", 4),  # a section
    ("streams:\n  - id: a\n    url: x.mp4\n    options:\n      rtsp_transport: tcp\n"
     "      rtsp_transport: udp\n", "rtsp_transport", 6),  # three levels down
    ("logging: {level: info, level: debug}\n", "level", 1),  # a flow mapping, one line
    ("streams: []\nstreams:\n  - {id: a, url: x.mp4}\n", "streams", 2),  # the top level
])
def test_duplicates_found_at_every_level(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert any(f"line {line}, " in p and f"duplicate key {key!r}" in p and str(path) in p
               for p in ei.value.problems), ei.value.problems


def test_merge_keys_override_without_being_duplicates() -> None:
    data, dups = load_yaml("base: &b {loop: true, realtime: true}\ncam: {<<: *b, loop: false}\n")
    assert dups == [] and data["cam"] == {"loop": False, "realtime": True}


def test_every_problem_in_one_run(tmp_path: Path) -> None:
    """A duplicate key, an unknown demo video, an unknown key and a missing file: all four."""
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - {id: a, url: 'demo://nope.mp4'}\n  - {id: b, url: /nope/b.mp4}\n"
                    "model: {threads: 1, threads: 2}\nlogging: {colour: red}\n")
    r = detectd("check-config", "--config", str(path))
    assert r.returncode == 2, r
    for expected in ("line 4, column 21: duplicate key 'threads'",
                     "streams[0].url: unknown demo video 'demo://nope.mp4'",
                     "logging.colour: unknown key",
                     "streams[1].url: stream 'b': file not found"):
        assert expected in r.stderr, r.stderr


def test_check_config_never_fetches(tmp_path: Path) -> None:
    """An empty cache and no way to download: check-config says what `run` will fetch, as a
    note, exits 0, and the cache stays empty."""
    cache = tmp_path / "cache"
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - {id: demo, url: 'demo://bikes.mp4', loop: true}\n")
    env = {**os.environ, "DETECTD_CACHE_DIR": str(cache),
           # Were pip run, it would fail at once instead of reaching any index.
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "nothing")}
    r = detectd("check-config", "--config", str(path), env=env)
    assert r.returncode == 0, r
    assert "note: streams[0].url: stream 'demo': the demo video is not in the cache" in r.stdout, r.stdout
    assert "ok (1 stream)" in r.stdout
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))


# --------------------------------------------------------------------------- every key names itself

@pytest.mark.parametrize("text, expected", [
    (None, "config file not found"),
    ("streams:\n  - id: a\n    url: [unclosed\n", "YAML syntax error at line"),
    ("streams:\n  - id: a\n    url: x.mp4\n    colour: red\n", "streams[0].colour: unknown key"),
    ("streams:\n  - {id: a, url: x.mp4}\n  - {id: a, url: y.mp4}\n", "streams[1].id: duplicate stream id 'a'"),
    ("streams:\n  - {id: 'a/b', url: x.mp4}\n", "streams[0].id: stream id 'a/b' must match"),
    ("streams:\n  - {id: a, url: x.mp4}\nmodel: {backend: cuda}\n", "model.backend:"),
    ("streams:\n  - {id: a, url: x.mp4}\nmetrics: {listen: nowhere}\n", "metrics.listen:"),
    ("streams:\n  - {id: a, url: /nonexistent/video.mp4}\n", "streams[0].url: stream 'a': file not found"),
    ("streams: []\n", "streams:"),
    # a near miss of a key names the key meant, in whichever section it is
    ("streams:\n  - {id: a, url: x.mp4, loops: true}\n",
     "streams[0].loops: unknown key; did you mean 'loop'?"),
    ("streams:\n  - {id: a, url: x.mp4}\nmodel: {precison: int8}\n",
     "model.precison: unknown key; did you mean 'precision'?"),
    ("streams:\n  - {id: a, url: x.mp4}\nmetrics: {listen: '127.0.0.1:99999'}\n",
     "metrics.listen: '127.0.0.1:99999': port 99999 is out of range 1..65535"),
    # a URL that lost its '://' reads as a relative file name: the line says what it looks like
    ("streams:\n  - {id: a, url: 'htp//example.com/video.mp4'}\n",
     "file not found: {dir}/htp/example.com/video.mp4 (a URL needs scheme://host/..."),
])
def test_check_config_names_the_problem(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    r = check_config(path)
    assert r.returncode == 2, r
    assert expected.replace("{dir}", str(tmp_path.resolve())) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_unknown_key_far_from_every_key_gets_no_guess(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - {id: a, url: x.mp4, colour: red}\n")
    r = check_config(path)
    assert "streams[0].colour: unknown key\n" in r.stderr, r.stderr


def test_check_config_defaults_to_config_yaml_here(tmp_path: Path, demo_video: Path) -> None:
    """Without --config, check-config reads ./config.yaml (the checkout's demo config); with
    none there it says so (exit 2) instead of argparse's bare 'required'."""
    (tmp_path / "config.yaml").write_text(f"streams:\n  - {{id: a, url: {demo_video}}}\n")
    r = subprocess.run([sys.executable, "-m", "daemon", "check-config", "--shard", "0/2"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("config.yaml: ok (1 stream)\n"), r.stdout
    (tmp_path / "config.yaml").unlink()
    r = subprocess.run([sys.executable, "-m", "daemon", "check-config"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r
    assert "no --config given and no config.yaml in the current directory" in r.stderr


def test_check_config_ok(tmp_path: Path, demo_video: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"streams:\n  - {{id: a, url: {demo_video}}}\n")
    r = check_config(path)
    assert r.returncode == 0, r.stderr


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - id: a\n    url: x.mp4\n  bad: : :\n")
    r = check_config(path)
    assert r.returncode == 2 and "line 4" in r.stderr, r.stderr


def test_run_with_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - {id: a, url: x.mp4, fps: 3}\n")
    r = subprocess.run([sys.executable, "-m", "daemon", "run", "--config", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "streams[0].fps: unknown key" in r.stderr


def test_check_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - {id: a, url: /nope/a.mp4}\n  - {id: a, url: ftp://host/x}\n"
                    "  - {id: c, url: /nope/c.mp4}\n")
    r = check_config(path)
    assert r.returncode == 2
    assert "streams[1].url: unsupported URL scheme ftp://" in r.stderr
    assert "streams[0].url: stream 'a': file not found" in r.stderr
    assert "streams[2].url: stream 'c': file not found" in r.stderr


# --------------------------------------------------------------------------- stream URLs and options

@pytest.mark.parametrize("password, char", [("Se#cret99", "%23"), ("Se/cret99", "%2F"),
                                            ("Se?cret99", "%3F"), ("Se@cret99", "%40"),
                                            ("Se%zcret99", "%25"), ("Séçret99", "UTF-8")])
def test_check_config_rejects_a_raw_special_character_and_names_the_fix(
        tmp_path: Path, password: str, char: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"streams:\n  - id: cam\n    url: 'rtsp://admin:{password}@127.0.0.1:9/cam'\n",
                    encoding="utf-8")
    r = check_config(path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "streams[0].url: the user name or password contains" in r.stderr
    assert char in r.stderr and "Percent-encode" in r.stderr
    assert "rtsp://USER:PASSWORD@127.0.0.1:9/cam" in r.stderr
    assert password not in r.stdout + r.stderr and "cret99" not in r.stdout + r.stderr


def test_check_config_accepts_the_encoded_password(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("streams:\n  - id: cam\n    url: 'rtsp://admin:Se%23cret99@127.0.0.1:9/cam'\n")
    r = check_config(path)
    assert r.returncode == 0, r.stderr
    assert "cret99" not in r.stdout + r.stderr


@pytest.mark.parametrize("stream, expected", [
    ({"options": {"f": "mjpeg"}}, "streams[0].options: 'f' is not a demuxer option (FFmpeg would ignore it): "
                                  "the input format has its own key, `format: mjpeg`"),
    ({"options": {"stimeout": "5000000"}}, "streams[0].options: 'stimeout' is not a demuxer option (FFmpeg "
                                           "would ignore it): FFmpeg 5 renamed it `timeout`"),
    ({"options": {"-re": ""}}, "'-re' is not a demuxer option (FFmpeg would ignore it): a command-line flag; "
                               "`realtime: true`"),
    ({"format": "mjpg"}, "streams[0].format: FFmpeg has no input format 'mjpg' (did you mean mjpeg"),
    ({"url": "rtsp://cam:99999/x"}, "streams[0].url: port '99999' is not a number from 0 to 65535"),
    ({"url": "rtsp:/cam/live"}, "streams[0].url: malformed URL: it starts with 'rtsp:/'; write rtsp://host/path"),
    ({"url": "rtsp://cam/live "}, "streams[0].url: the URL starts or ends with whitespace; remove it"),
    ({"url": "rtsp://::1/live"}, "streams[0].url: an IPv6 address must be in brackets"),
])
def test_check_config_input_format_and_url_shape(tmp_path: Path, stream: dict[str, Any], expected: str) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"streams": [{"id": "cam", "url": "http://127.0.0.1:9/stream", **stream}]}))
    r = check_config(path)
    assert r.returncode == 2 and expected in r.stderr, r.stderr
