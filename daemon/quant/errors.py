"""Errors of INT8 calibration (every message names the input) and the cancel check."""

from __future__ import annotations

import threading

from daemon.errors import Cancelled, DetectdError


class CalibrationError(DetectdError, RuntimeError):
    """Calibration cannot proceed; the message says why and names the input."""


class CalibrationCancelled(CalibrationError, Cancelled):
    """The caller's cancel event was set (daemon shutdown): nothing was written."""


class AgreementTooLow(CalibrationError):
    """The INT8 model's agreement with FP32 on held-out frames is below the configured gate."""


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CalibrationCancelled("INT8 calibration cancelled (stop requested); "
                                   "nothing was written")

