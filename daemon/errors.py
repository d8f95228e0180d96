"""The root of detectd's own exceptions, and the exit status each kind ends a command with.

Every exception detectd raises on purpose derives from :class:`DetectdError`; where callers (or
the standard library's habits) catch a builtin, the class keeps that builtin base too
(``ConfigError`` stays catchable as itself, ``CurveError`` as ``ValueError``, ``EndpointInUse``
as ``OSError``...), so re-parenting changed no ``except`` clause's meaning.

Kinds and their exit statuses (:class:`ExitCode`):

- invalid input, exit 2 (:class:`UsageError`): ``config.ConfigError``,
  ``publish.mqtt_config.MqttCredentialError`` (``mqtt.password_file`` missing or unreadable);
- a model or an asset, exit 1: ``models.assets.AssetError``, ``models.info.ModelInfoError``,
  ``models.darknet.DarknetError``, ``quant.errors.CalibrationError`` (``AgreementTooLow``),
  ``quant.cache.CacheFormatError`` / ``CacheMismatch``, ``prepare.DemoVideoUnavailable`` (a
  ``ConfigError`` by its lines, but the file is valid);
- an inference backend, exit 1: ``backends.base.BackendError``, ``backends.cuda.CudaError``;
- a socket or a key file, exit 1: ``publish.endpoint.EndpointInUse``, ``publish.curve.CurveError``
  (``detectd subscribe`` exits 2 for a key file named on its command line: its arguments);
- a source, a message or an output file, exit 1: ``sources.errors.SourceError``,
  ``sources.pyav.PermanentError``, ``sources.validate.UnsupportedFrame``,
  ``publish.client.DecodeError``, ``commands.annotate.OutputError``;
- work abandoned on request, exit 1 (:class:`Cancelled`: ``backends.tensorrt.BuildCancelled``,
  ``quant.calibrate.CalibrationCancelled``); ``detectd run`` exits 0 when it was the stop it was
  asked for.

:func:`exit_code` is the one mapping every command uses; the statuses themselves are
:class:`ExitCode` (README "Command line", docs/vocabulary.md). A new error kind: subclass
:class:`DetectdError` (or :class:`UsageError` for bad input) in the module that raises it, set
``exit_code`` if it is not 1, and add it to the list above.
"""

from __future__ import annotations

import logging
from enum import IntEnum
from typing import ClassVar

__all__ = ["ExitCode", "DetectdError", "UsageError", "Cancelled", "exit_code", "fail"]


class ExitCode(IntEnum):
    """The exit statuses of detectd's commands."""

    OK = 0
    FAILURE = 1  # the command could not do its work: a model, a backend, a socket, a source...
    USAGE = 2  # invalid input: the config, an option, a key file named on the command line
    BELOW_GATE = 3  # `detectd calibrate --min-agreement`: the INT8 model agrees too little
    INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C (a second one, for `detectd run`)


class DetectdError(Exception):
    """Root of detectd's own errors. ``exit_code``: the status a command exits with when this
    error ends it (see the module table)."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE


class UsageError(DetectdError):
    """The input is wrong (a config value, a command-line option): fixing it is the user's move."""

    exit_code: ClassVar[ExitCode] = ExitCode.USAGE


class Cancelled(DetectdError):
    """Long work (an engine build, a calibration) abandoned because a stop was requested;
    nothing half-done was kept. A command that asked for the stop treats it as success."""


def exit_code(exc: BaseException) -> ExitCode:
    """The exit status for ``exc`` ending a command: a :class:`DetectdError`'s own
    ``exit_code``, :attr:`ExitCode.INTERRUPTED` for Ctrl-C, :attr:`ExitCode.FAILURE` for anything
    else the command chose to catch (``OSError`` from a bind, FFmpeg's errors...)."""
    if isinstance(exc, DetectdError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.FAILURE


def fail(exc: BaseException, log: logging.Logger, prefix: str = "") -> ExitCode:
    """Log ``exc`` as one ERROR line (``prefix`` + its message, no traceback) and return its
    :func:`exit_code`: what a command does with an error it expected."""
    log.error("%s%s", prefix, exc)
    return exit_code(exc)
