"""Logging: one line per event, journald priorities under systemd, credentials never written.

Under systemd, stderr is connected to the journal and ``JOURNAL_STREAM`` names that stream
(``<device>:<inode>``). journald reads a ``<N>`` prefix on each line as the syslog priority and
stamps the time itself, so in that mode a line is ``<6>daemon.app: message``. Anywhere else
(a terminal, a file, a container log) a line carries its own time and level name.

journald (and every line-oriented log shipper) splits on newlines, so a traceback or a message
with embedded newlines would become several entries, the later ones without a priority. Every
record is therefore written as exactly one line: newlines are escaped as ``\\n``.

Stream URLs carry credentials and FFmpeg repeats them in its error messages. The
:class:`RedactFilter` on the handler passes every message and traceback through
:func:`daemon.redact.redact_text` before anything is formatted, whichever logger emitted it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
import time
import traceback
import warnings
from typing import Callable, TextIO

__all__ = [
    "RedactFilter",
    "OneLineFormatter",
    "JournalFormatter",
    "journal_priority",
    "stream_is_journal",
    "setup_logging",
]


def _load_redactor() -> Callable[[str], str]:
    try:
        from daemon.redact import redact_text
    except ImportError:  # pragma: no cover - the module ships with the package
        import re

        userinfo = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*@")
        return lambda text: userinfo.sub(r"\1***@", str(text))
    return redact_text


_redact: Callable[[str], str] = _load_redactor()

# syslog priorities (sd-daemon.h): journald maps "<N>" at the start of a line to PRIORITY=N.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def journal_priority(levelno: int) -> int:
    """The syslog priority of a Python log level: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, else 7."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


class RedactFilter(logging.Filter):
    """Rewrites a record so that its message and traceback carry no credentials.

    Installed on the handler (not on a logger) so that records propagated from every logger,
    third-party ones included, pass through it. The message is formatted once here and the
    arguments dropped, so no later formatter can re-insert an unredacted argument.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what can be shown, never drop the event
            message = f"{record.msg!r} % {record.args!r}"
        record.msg = _redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = _redact(record.exc_text)
        if record.stack_info:
            record.stack_info = _redact(record.stack_info)
        return True


def _one_line(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")


class OneLineFormatter(logging.Formatter):
    """``2025-01-31 12:00:00.123 INFO    daemon.app: message`` -- for terminals and files."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        # Redact again at the very end: a handler without RedactFilter still leaks nothing.
        return _redact(_one_line(super().format(record)))


class JournalFormatter(OneLineFormatter):
    """``<6>daemon.app: message`` -- journald adds the time, the unit and the pid itself."""

    def __init__(self) -> None:
        logging.Formatter.__init__(self, "%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{journal_priority(record.levelno)}>{super().format(record)}"


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM`` matches).

    systemd documents that the device and inode must be compared: a child process that inherits
    the variable but writes to a pipe or a terminal must not get ``<N>`` prefixes.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


_HANDLER_MARK = "_detectd_handler"


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: ``py.warnings: UserWarning: text (module.py:12)``."""
    if file is not None:  # someone asked for a specific stream: the standard behaviour
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    where = "/".join(Path(filename).parts[-2:]) if filename else "?"
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, where, lineno)


def setup_logging(
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    journal: bool | None = None,
) -> logging.Handler:
    """Configure the root logger: one handler on ``stream`` (stderr), redacting, one line each.

    ``journal`` forces the journald format on or off; by default it is chosen by comparing
    ``JOURNAL_STREAM`` with the stream. Calling it again (on SIGHUP, in tests) replaces the
    handler it installed before rather than adding a second one.
    """
    stream = sys.stderr if stream is None else stream
    if isinstance(level, str):
        name = level.strip().upper()
        resolved = logging.getLevelName(name)
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}")
        level = resolved
    if journal is None:
        journal = stream_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else OneLineFormatter())
    handler.addFilter(RedactFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Python warnings (ours and libraries') become one WARNING record each on "py.warnings",
    # with the category, the message and where it was raised; never the source line that
    # logging.captureWarnings() would quote.
    warnings.showwarning = _show_warning
    # Timestamps in local time are what a person at a terminal expects; journald stores UTC.
    OneLineFormatter.converter = time.localtime
    return handler
