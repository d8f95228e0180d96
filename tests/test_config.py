"""Config hygiene (issue 10, kind F): duplicate YAML keys are errors naming the key and its line,
at every nesting level and on every path that reads a config (check-config, run, SIGHUP: see
tests/test_reliability.py); check-config reports every problem in one run and never fetches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config
from daemon.yamlconf import load_yaml
from tests.harness import ROOT

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
    assert "ok (1 streams)" in r.stdout
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))
