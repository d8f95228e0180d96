"""What a start says (issue 10, "also noticed"): every line through the logger, each thing once,
the first status rate measured over the pipeline's own time, and a busy port refused before
the model loads. A real ``detectd run`` process each time."""

from __future__ import annotations

import logging
import re
import signal
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: ")
STATUS = re.compile(r"status: ([\d.]+) frames/s \((\d+) frames in ([\d.]+) s\)")


def test_start_log_is_one_logger_line_per_event(run_daemon: Any) -> None:
    interval = 1.0
    d = run_daemon([{"id": "demo", "url": "demo://bikes.mp4", "loop": True, "realtime": True}],
                   logging={"status_interval": interval})
    deadline = time.monotonic() + 60
    while len(STATUS.findall(d.log())) < 2 and time.monotonic() < deadline:
        d.collect(0.5)
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    lines = d.log().splitlines()
    # Nothing printed beside the logger (no "verified ..." lines without a level or priority).
    assert [ln for ln in lines if not LINE.match(ln)] == [], lines
    # Each said once: the backend choice, and one summary of the verified assets.
    assert len([ln for ln in lines if "inference backend:" in ln]) == 1, lines
    verified = [ln for ln in lines if "verified" in ln]
    assert len(verified) == 1 and "assets verified (SHA-256) in the cache: " in verified[0], verified
    assert "bikes.mp4" in verified[0]  # demo:// was resolved at start, not while parsing
    # The first status line covers the running pipeline only: its window starts after the model
    # was loaded (loading is not time in which frames could flow), and its rate is its own
    # count over its own window.
    rate, frames, window = (float(x) for x in STATUS.findall(d.log())[0])
    loaded = next(ln for ln in lines if "loaded and warm" in ln)
    first = next(ln for ln in lines if STATUS.search(ln))
    since_loaded = _stamp(first) - _stamp(loaded)
    assert window <= since_loaded + 0.05, (window, since_loaded)  # (the log's ms resolution)
    assert window >= interval - 0.05
    # Both figures are printed to 0.1: the window is within +-0.05 s of its printed value.
    assert frames / (window + 0.05) - 0.05 <= rate <= frames / (window - 0.05) + 0.05, (rate, frames, window)


def _stamp(line: str) -> float:
    """Seconds of a log line's local time stamp (``YYYY-mm-dd HH:MM:SS.mmm``)."""
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000


def test_busy_preview_port_fails_before_the_model_loads(run_daemon: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        d = run_daemon([{"id": "demo", "url": "demo://bikes.mp4"}], wait=False,
                       preview={"enabled": True, "listen": f"127.0.0.1:{port}"})
        assert d.proc.wait(60) == 1
    log = d.log()
    assert f"preview.listen: cannot listen on 127.0.0.1:{port}" in log, log
    assert "Traceback" not in log
    # Refused before any model work: no backend chosen, nothing loaded or exported.
    assert "inference backend" not in log and "loaded and warm" not in log, log


@pytest.mark.slow
def test_int8_shortfall_warning_said_once(tmp_path: Path, fp32_onnx: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Two photos for 5 calibration + 3 held-out frames: agreement cannot be measured. The
    daemon's INT8 hook says so in one WARNING (naming the config keys), not as a report line,
    a raw Python warning and the gate's warning."""
    from daemon.config import CalibrationConfig
    from daemon.models import assets
    from daemon.quant.ensure import ensure_int8_model

    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in assets.fetch_photos(progress=False).values()))
    settings = CalibrationConfig(source=str(listing), count=5, holdout=3)  # as model.calibration
    logging.captureWarnings(True)  # as the daemon's logging does: a Python warning is a record
    try:
        with caplog.at_level(logging.INFO), warnings.catch_warnings():
            warnings.simplefilter("always")
            ensure_int8_model(fp32_onnx, settings, cache_dir=tmp_path)
    finally:
        logging.captureWarnings(False)
    said = [r for r in caplog.records if "hold out" in r.getMessage() or "NOT" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert said[0].levelno == logging.WARNING and said[0].name != "py.warnings"
    assert "model.calibration.count" in said[0].getMessage()
    assert "fewer than the 5 calibration frames" in said[0].getMessage()  # what happened, too
