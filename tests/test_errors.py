"""daemon/errors.py: one root for detectd's exceptions, one exit status per kind. Re-parenting
kept each class's builtin base, so every existing ``except ValueError`` / ``except OSError``
still catches what it caught."""

from __future__ import annotations

import errno

import pytest

from daemon import errors
from daemon.backends.base import BackendError
from daemon.backends.cuda import CudaError
from daemon.backends.tensorrt import BuildCancelled
from daemon.annotate import OutputError
from daemon.config import ConfigError
from daemon.errors import Cancelled, DetectdError, ExitCode, exit_code
from daemon.models.assets import AssetError
from daemon.models.darknet import DarknetError
from daemon.models.info import ModelInfoError
from daemon.prepare import DemoVideoUnavailable
from daemon.publish.client import DecodeError
from daemon.publish.curve import CurveError
from daemon.publish.endpoint import EndpointInUse
from daemon.publish.mqtt_config import MqttCredentialError
from daemon.quant.cache import CacheFormatError, CacheMismatch
from daemon.quant.errors import AgreementTooLow, CalibrationCancelled, CalibrationError
from daemon.sources.errors import SourceError
from daemon.sources.pyav import PermanentError
from daemon.sources.validate import UnsupportedFrame

# (class, the builtin it was before and still is, its exit status)
TABLE = [
    (ConfigError, Exception, ExitCode.USAGE),
    (DemoVideoUnavailable, Exception, ExitCode.FAILURE),
    (AssetError, RuntimeError, ExitCode.FAILURE),
    (ModelInfoError, ValueError, ExitCode.FAILURE),
    (DarknetError, ValueError, ExitCode.FAILURE),
    (BackendError, RuntimeError, ExitCode.FAILURE),
    (CudaError, RuntimeError, ExitCode.FAILURE),
    (CalibrationError, RuntimeError, ExitCode.FAILURE),
    (AgreementTooLow, RuntimeError, ExitCode.FAILURE),
    (CacheFormatError, ValueError, ExitCode.FAILURE),
    (CacheMismatch, Exception, ExitCode.FAILURE),
    (CurveError, ValueError, ExitCode.FAILURE),
    (DecodeError, ValueError, ExitCode.FAILURE),
    (EndpointInUse, OSError, ExitCode.FAILURE),
    (MqttCredentialError, OSError, ExitCode.USAGE),
    (UnsupportedFrame, ValueError, ExitCode.FAILURE),
    (PermanentError, Exception, ExitCode.FAILURE),
    (OutputError, Exception, ExitCode.FAILURE),
]


@pytest.mark.parametrize(("cls", "builtin", "code"), TABLE, ids=[c.__name__ for c, _, _ in TABLE])
def test_one_root_builtin_bases_kept(cls: type[Exception], builtin: type[Exception], code: int) -> None:
    assert issubclass(cls, DetectdError) and issubclass(cls, builtin)
    assert cls.exit_code == code  # type: ignore[attr-defined]


def test_constructors_behave_as_before() -> None:
    e = EndpointInUse("ipc:///run/x is in use by another detectd (pid 7)")
    assert e.errno == errno.EADDRINUSE and str(e) == "ipc:///run/x is in use by another detectd (pid 7)"
    assert exit_code(e) == 1
    c = ConfigError(["a.b: bad", "c: worse"])
    assert c.problems == ["a.b: bad", "c: worse"] and str(c) == "a.b: bad\nc: worse"
    assert SourceError("network", "no video stream").kind == "network"


def test_cancelled_is_one_base_for_every_abandoned_job() -> None:
    for cls in (BuildCancelled, CalibrationCancelled):
        assert issubclass(cls, Cancelled)
    assert issubclass(BuildCancelled, BackendError) and issubclass(CalibrationCancelled, CalibrationError)
    # Not requested, a cancellation is a failure like its family's (exit 1).
    assert exit_code(BuildCancelled("stop")) == exit_code(CalibrationCancelled("stop")) == 1


def test_exit_code_of_what_commands_catch() -> None:
    assert exit_code(ConfigError(["x: y"])) == 2
    assert exit_code(DemoVideoUnavailable(["streams[0].url: ..."])) == 1
    assert exit_code(OSError(98, "in use")) == 1
    assert exit_code(ValueError("FFmpeg said no")) == 1
    assert exit_code(KeyboardInterrupt()) == 130


def test_fail_logs_one_line_and_returns_the_code(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    log = logging.getLogger("detectd.test")
    with caplog.at_level(logging.ERROR, logger="detectd.test"):
        assert errors.fail(CurveError("key.key_secret: not a CURVE key"), log, "publish.curve: ") == 1
    assert caplog.messages == ["publish.curve: key.key_secret: not a CURVE key"]
