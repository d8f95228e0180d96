"""Shared fixtures: real assets, free ports, a real daemon process, a real ZeroMQ subscriber."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.harness import DaemonProcess

try:  # the RTSP server fixtures, when present
    from tests.rtsp_fixtures import *  # noqa: F401,F403
except ImportError:
    pass


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--media", default=None,
                     help="folder with the media files (bikes.mp4, bus.jpg, ...) for GPU tests; "
                          "default: the cache's media folder ($DETECTD_CACHE_DIR/media)")


@pytest.fixture(scope="session")
def gpu_media(request: pytest.FixtureRequest) -> Path:
    """Where GPU tests find real media: ``--media`` or ``$DETECTD_CACHE_DIR/media`` (cache_dir)."""
    from daemon.models.assets import cache_dir

    opt = request.config.getoption("--media")
    return Path(opt) if opt else cache_dir() / "media"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_assets() -> Any:
    from daemon.models import assets

    return assets.fetch_model(progress=False)


@pytest.fixture(scope="session")
def demo_video() -> Path:
    from daemon.models import assets

    return assets.fetch_demo_video(progress=False)


@pytest.fixture(scope="session")
def demo_clip(demo_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo video's first 60 packets as a 60-frame file (about 2.4 s; packets copied, the
    same pixels: see ``tests.support.sources.clip``), for tests whose property does not depend
    on the length of the video."""
    from tests.support.sources import clip

    path = tmp_path_factory.mktemp("clip") / "bikes-60.mp4"
    assert clip(demo_video, path, 60) == 60
    return path


@pytest.fixture(scope="session")
def fp32_onnx(model_assets: Any) -> Path:
    from daemon.config import ModelConfig
    from daemon.models.resolve import fp32_model

    return fp32_model(ModelConfig(), progress=False)


@pytest.fixture
def run_daemon(tmp_path: Path, fp32_onnx: Path) -> Iterator[Any]:
    """``run_daemon(streams, subscribe=b"", wait=True, **sections)``: a started
    :class:`DaemonProcess` (test defaults, SUB socket connected first), ready unless
    ``wait=False``; every one is stopped at the end of the test."""
    procs: list[DaemonProcess] = []

    def start(streams: list[dict[str, Any]], subscribe: bytes = b"", wait: bool = True,
              **sections: Any) -> DaemonProcess:
        d = DaemonProcess(tmp_path, streams, name=f"detectd-{len(procs)}", subscribe=subscribe, **sections)
        procs.append(d)
        if wait:
            d.start(ready_timeout=60)
        else:
            d.launch()
        return d

    yield start
    for d in procs:
        d.close()
