"""daemon.logs: journald prefixes only on the real journal stream, one line per event, redaction."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from daemon.logs import journal_priority, setup_logging, stream_is_journal

SECRET_URL = "rtsp://admin:hunter2@10.0.0.5:554/live?token=abc123&channel=1"

CHILD = r"""
import logging, sys
from daemon.logs import setup_logging
setup_logging("DEBUG")
log = logging.getLogger("daemon.test")
log.debug("debug line")
log.info("stream %s opened", sys.argv[1])
log.warning("slow\nsecond line")
try:
    raise ConnectionError("cannot open " + sys.argv[1])
except ConnectionError:
    log.exception("stream cam1 failed")
logging.getLogger("libav").critical("Error opening input '%s'", sys.argv[1])
"""


def _run_child(tmp_path: Path, journal: bool) -> list[str]:
    """Run a real process whose stderr is a file; JOURNAL_STREAM names that file when asked."""
    err = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    with open(err, "w") as fh:
        if journal:
            st = os.fstat(fh.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run(
            [sys.executable, "-c", CHILD, SECRET_URL], stderr=fh, env=env, check=True, timeout=60
        )
    return err.read_text().splitlines()


def test_journald_priority_prefixes(tmp_path: Path) -> None:
    lines = _run_child(tmp_path, journal=True)
    assert len(lines) == 5, lines  # one line per event, traceback and embedded newline included
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert lines[1].startswith("<6>daemon.test: stream rtsp://")
    assert lines[2] == "<4>daemon.test: slow\\nsecond line"
    assert "Traceback (most recent call last):" in lines[3] and "ConnectionError" in lines[3]
    for line in lines:
        assert "hunter2" not in line and "abc123" not in line and "admin" not in line


def test_terminal_lines_are_plain_and_redacted(tmp_path: Path) -> None:
    lines = _run_child(tmp_path, journal=False)
    assert len(lines) == 5, lines
    for line in lines:
        assert not line.startswith("<")
        assert "hunter2" not in line and "abc123" not in line
    assert " INFO    daemon.test: stream rtsp://***@10.0.0.5:554/live?token=***&channel=1 opened" in lines[1]
    assert " CRITICAL libav: Error opening input 'rtsp://***@" in lines[4]


def test_inherited_journal_stream_is_ignored_on_another_stream(tmp_path: Path) -> None:
    # A child started from a unit inherits JOURNAL_STREAM but may write to a pipe or terminal.
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(a, env)
        assert not stream_is_journal(b, env)
        assert not stream_is_journal(a, {})
        assert not stream_is_journal(a, {"JOURNAL_STREAM": "garbage"})
    assert not stream_is_journal(io.StringIO(), env)


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (logging.DEBUG, 7), (5, 7)],
)
def test_priority_table(level: int, priority: int) -> None:
    assert journal_priority(level) == priority


def test_setup_is_idempotent_and_redacts_args_of_any_logger() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        buf = io.StringIO()
        setup_logging("info", stream=buf)
        handler = setup_logging("info", stream=buf, journal=True)
        ours = [h for h in root.handlers if h not in before]
        assert ours == [handler]
        logging.getLogger("some.library").error("GET %s failed, password=%s", "http://u:p@h/x?sig=zz", "pw1")
        out = buf.getvalue()
        assert out.startswith("<3>some.library: GET http://***@h/x?sig=*** failed, password=***")
        assert "pw1" not in out and "zz" not in out
        with pytest.raises(ValueError):
            setup_logging("loud", stream=buf)
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


def test_python_warnings_are_one_log_line_without_source() -> None:
    """A warning raised by any code is one WARNING record on py.warnings: category, message and
    place, never the quoted source line (logging.captureWarnings' format)."""
    buf = io.StringIO()
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.simplefilter("always")
        handler = setup_logging("INFO", stream=buf, journal=False)
        try:
            warnings.warn("calibration gave fewer frames\nthan asked", UserWarning, stacklevel=1)
        finally:
            logging.getLogger().removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert " WARNING py.warnings: UserWarning: calibration gave fewer frames\\nthan asked " in lines[0]
    assert "(tests/test_logs.py:" in lines[0], lines[0]
    assert "warnings.warn(" not in lines[0]  # no source line
