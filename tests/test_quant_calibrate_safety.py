"""Calibration sources are untrusted input too: no password in any report, no frame that aborts.

- A stream URL given as ``model.calibration.source`` or ``detectd calibrate --source`` never
  shows its credentials: not in the report's ``source``, not in the skipped examples (PyAV's
  exception text repeats the URL and an ``[Errno N]``), not on stderr, not in ``--report`` JSON.
  Every printable special character in the user name and in the password, raw and encoded.
- A frame that would abort libswscale (a Bayer mosaic of odd height, ``tests/data/bayer_17x9.nut``)
  is skipped with the rule in words, by ``detectd calibrate`` and by the daemon that calibrates
  at start (``precision: int8``), each run as a real process.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from daemon.config import parse_config
from daemon.quant.sources import FrameSource, no_frames_message
from daemon.redact import redact_text
from tests.harness import DaemonProcess, free_port
from tests.support.secrets import SPECIALS, forms

ROOT = Path(__file__).resolve().parents[1]
BAYER = ROOT / "tests" / "data" / "bayer_17x9.nut"
BAYER_RULE = "a Bayer mosaic needs an even width and height"


def _printed(src: FrameSource) -> list[str]:
    """Everything of a FrameSource that reaches a message, a log line or the JSON report."""
    return [src.report.description, no_frames_message(src), *src.report.skipped_examples,
            *src.report.skipped]


@pytest.mark.parametrize("char", SPECIALS, ids=[f"U+{ord(c):04X}" for c in SPECIALS])
@pytest.mark.parametrize("where", ["password", "user"])
@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "encoded"])
def test_refused_calibration_url_never_shows_its_credentials(char: str, where: str,
                                                             encoded: bool) -> None:
    password = f"Se{char}cret99" if where == "password" else "Se(cret99"
    user = f"ad{char}min" if where == "user" else "admin"
    enc = (lambda s: quote(s, safe="")) if encoded else (lambda s: s)
    url = f"rtsp://{enc(user)}:{enc(password)}@127.0.0.1:{free_port()}/cam"  # nothing listens
    src = FrameSource(url, 5)
    assert list(src.frames()) == []
    assert src.report.skipped, "the refused stream is reported as skipped"
    for text in _printed(src):
        for f in forms(password):
            assert f not in text, text
        # words, not error numbers (ECONNREFUSED is 111; the port may contain "111" too)
        assert "Errno" not in text and not re.search(r"(?<![\d:])111(?!\d)", text), text
    if encoded:  # a raw "#", "/", "?"... may make FFmpeg reject the URL before connecting
        assert "cannot open video (Connection refused)" in no_frames_message(src)
    assert "127.0.0.1" in src.report.description  # the host stays readable


def test_config_calibration_source_registers_its_password() -> None:
    """A config with a calibration URL: its password is masked wherever it is echoed later,
    also outside any URL (FFmpeg words, a repr)."""
    password = "Cal(ibr8Secret"
    parse_config({"streams": [{"id": "s", "url": "/dev/null"}],
                  "model": {"calibration": {"source": f"rtsp://admin:{password}@cam.example/x"}}})
    for text in (f"auth failed for {password}", repr({"p": password}), quote(password, safe="")):
        assert password not in redact_text(text) and quote(password, safe="") not in redact_text(text)


@pytest.mark.parametrize("password", ['Se(cret99"x', "q}", "p'[w]<d>"])
def test_cli_report_of_a_stream_with_credentials_names_no_password(
        rtsp_server: Any, fp32_onnx: Path, tmp_path: Path, password: str) -> None:
    """A real RTSP camera with Basic auth as ``--source``: stdout, stderr and the JSON report."""
    srv = rtsp_server(user="cam", password=password)
    report = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-m", "daemon", "calibrate", "--model", str(fp32_onnx), "--source",
         srv.url, "--count", "4", "--holdout", "2", "--every", "1", "--target", "cpu",
         "--out", str(tmp_path / "m.onnx"), "--report", str(report), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["source"].startswith("rtsp://***@127.0.0.1:"), data["source"]
    for text in (r.stdout, r.stderr, report.read_text()):
        for f in forms(password) | {f"cam:{password}", f"cam:{quote(password, safe='')}"}:
            assert f not in text, text


# --------------------------------------------------------------------------- unsafe frames

def _cli_calibrate(fp32_onnx: Path, source: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "calibrate", "--model", str(fp32_onnx), "--source",
         str(source), "--count", "4", "--holdout", "0", "--every", "1", "--target", "cpu",
         "--out", str(tmp_path / "m.onnx"), "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_skips_an_odd_bayer_video(fp32_onnx: Path, tmp_path: Path) -> None:
    r = _cli_calibrate(fp32_onnx, BAYER, tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)  # not -SIGABRT
    assert "no usable frame" in r.stderr and BAYER_RULE in r.stderr and "bayer_rggb8" in r.stderr


def test_cli_skips_an_odd_bayer_picture_in_an_image_list(fp32_onnx: Path, tmp_path: Path) -> None:
    """The same frame read as a picture (a list entry goes through the image path)."""
    listing = tmp_path / "frames.txt"
    listing.write_text(f"{BAYER}\n")
    r = _cli_calibrate(fp32_onnx, listing, tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert BAYER_RULE in r.stderr, r.stderr


def test_daemon_calibrating_on_an_odd_bayer_video_exits_with_the_rule(
        fp32_onnx: Path, demo_video: Path, tmp_path: Path) -> None:
    """``precision: int8`` calibrates at start: the unsafe source is an error in words (exit 1),
    never a SIGABRT of the process."""
    d = DaemonProcess(
        tmp_path, [{"id": "cam", "url": str(demo_video)}], subscribe=b"",
        model={"precision": "int8",
               "calibration": {"source": str(BAYER), "count": 4, "holdout": 0, "every": 1}}).launch()
    try:
        rc = d.collect_until_exit(240)
        log = d.log()
    finally:
        d.close()
    assert rc == 1 and rc != -signal.SIGABRT, (rc, log)
    assert BAYER_RULE in log, log
