"""stall_timeout is the one judge: every other timeout follows from it or is rejected by the
config (and so by ``detectd check-config``) with both keys named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import ConfigError, StreamConfig, parse_config
from daemon.sources.probe import probe_target
from daemon.sources.pyav import open_options, policy_config
from daemon.sources.timeouts import connect_timeout, read_bound

ROOT = Path(__file__).resolve().parent.parent


def stream(**kw: Any) -> StreamConfig:
    return StreamConfig(**{"id": "cam", "url": "rtsp://127.0.0.1:8554/cam", **kw})


def test_case_8_read_bounds_follow_stall_timeout() -> None:
    s = stream(stall_timeout=40)
    assert read_bound(s.stall_timeout, s.read_timeout) == 41.0
    assert open_options(s)["timeout"] == "41000000"  # FFmpeg's socket I/O timeout, microseconds
    http = stream(url="http://cam.local/mjpg", stall_timeout=40)
    assert open_options(http)["timeout"] == "41000000"
    assert policy_config(s).stall_timeout == 40
    assert policy_config(s).connect_timeout == connect_timeout(s.open_timeout) == 22.0


def test_explicit_read_timeout_at_or_above_stall_timeout_is_accepted() -> None:
    assert read_bound(40, 40) == 40
    assert read_bound(40, 300) == 41
    assert open_options(stream(stall_timeout=10, read_timeout=10))["timeout"] == "10000000"


@pytest.mark.parametrize(("over", "keys"), [
    ({"stall_timeout": 40, "read_timeout": 10}, ("read_timeout (10 s)", "stall_timeout (40 s)")),
    ({"stall_timeout": 20, "options": {"timeout": "5000000"}}, ("options.timeout", "stall_timeout (20 s)")),
    ({"options": {"rw_timeout": "2000000"}}, ("options.rw_timeout", "stall_timeout (10 s)")),
    ({"options": {"timeout": "soon"}}, ("options.timeout", "microseconds")),
])
def test_a_timeout_below_stall_timeout_is_a_config_error_naming_both_keys(
        over: dict[str, Any], keys: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"streams": [{"id": "cam", "url": "rtsp://127.0.0.1:8554/cam", **over}]})
    text = "\n".join(ei.value.problems)
    assert text.startswith("streams[0]")
    for k in keys:
        assert k in text


def test_socket_options_of_other_protocols_are_left_alone() -> None:
    # rtmp's ``timeout`` is a listen timeout in seconds: not ours to judge.
    parse_config({"streams": [{"id": "cam", "url": "rtmp://h/app", "options": {"timeout": "5"}}]})


def test_check_config_cli_reports_it_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"streams": [
        {"id": "night", "url": "rtsp://127.0.0.1:8554/cam", "stall_timeout": 40, "read_timeout": 10}]}))
    r = subprocess.run([sys.executable, "-m", "daemon", "check-config", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert "read_timeout (10 s) is less than stall_timeout (40 s)" in r.stdout + r.stderr


@pytest.mark.parametrize(("url", "target"), [
    ("rtsp://u:p@10.0.0.5/cam", ("10.0.0.5", 554)),
    ("rtsp://u:p%23w@cam.local:8554/s?x=1", ("cam.local", 8554)),
    ("rtsps://[::1]:3222/s", ("::1", 3222)),
    ("http://cam/mjpg", ("cam", 80)),
    ("https://cam/mjpg", ("cam", 443)),
    ("/videos/a.mp4", None),
    ("udp://239.0.0.1:1234", None),
    ("srt://cam:9000", None),
    ("rtmp://media/live/cam", ("media", 1935)),
    ("tcp://10.0.0.9:5000", ("10.0.0.9", 5000)),
    ("tcp://10.0.0.9", None),
    ("rtsp://cam:notaport/x", None),
])
def test_probe_target(url: str, target: tuple[str, int] | None) -> None:
    assert probe_target(url) == target


def test_probes_only_for_network_sources_with_a_host() -> None:
    assert policy_config(stream()).probe_interval == 1.0
    assert policy_config(stream(probe_interval=0)).probe_interval == 0.0
    assert policy_config(stream(url="/tmp/a.mp4")).probe_interval == 0.0


@pytest.mark.parametrize("url", ["udp://0.0.0.0:5000", "tcp://cam.local:8000", "srt://cam.local:9000",
                                 "rtsp://cam.local/s", "https://cam.local/m"])
@pytest.mark.parametrize("key", ["timeout", "rw_timeout"])
def test_socket_timeouts_of_every_live_protocol_are_checked(url: str, key: str) -> None:
    # tcp/udp/srt's ``timeout`` and every protocol's ``rw_timeout`` are microseconds too:
    # 5 s would cut a source off long before stall_timeout: 40 decides.
    with pytest.raises(ConfigError) as ei:
        parse_config({"streams": [{"id": "cam", "url": url, "stall_timeout": 40, "options": {key: "5000000"}}]})
    text = "\n".join(ei.value.problems)
    assert f"options.{key}" in text and "stall_timeout (40 s)" in text
    # At or above stall_timeout in microseconds: accepted.
    parse_config({"streams": [{"id": "cam", "url": url, "stall_timeout": 40, "options": {key: "40000000"}}]})


def test_rw_timeout_is_checked_on_rtmp_but_its_listen_timeout_in_seconds_is_not() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"streams": [{"id": "cam", "url": "rtmp://h/app", "stall_timeout": 40,
                                   "options": {"rw_timeout": "5000000"}}]})
    assert "options.rw_timeout" in "\n".join(ei.value.problems)
    parse_config({"streams": [{"id": "cam", "url": "rtmp://h/app", "stall_timeout": 40, "options": {"timeout": "60"}}]})
