"""Open a source the way FFmpeg's command-line tool would, and pick the stream to analyse.

- Input format: ``streams[].format`` is ``ffmpeg -f`` (``av.open(format=...)``); without it
  FFmpeg probes the data (and, over HTTP, the Content-Type).
- Options: per-protocol defaults (RTSP over TCP with a socket timeout; HTTP with a socket
  timeout and FFmpeg's own reconnect off, since detectd's policy reconnects; a live raw MJPEG
  stream probed on its first image only), then ``streams[].options`` over them.
- Stream selection (:func:`pick_video_stream`): ffmpeg's automatic ``-map`` for video
  (``map_auto_video`` in ``fftools/ffmpeg_mux_init.c``): the video stream with the highest
  ``width * height``, plus a bonus for the ``default`` disposition; an attached picture (cover
  art, ``disposition.attached_pic``) is never taken, and neither is a stream FFmpeg has no
  decoder for.
"""

from __future__ import annotations

from typing import Any

from daemon.config import StreamConfig

__all__ = ["open_options", "pick_video_stream", "describe_streams", "NO_VIDEO"]

NO_VIDEO = "no video stream in the input"


def open_options(cfg: StreamConfig) -> dict[str, str]:
    """FFmpeg demuxer/protocol options for ``av.open``: defaults for the URL's protocol, then
    ``cfg.options`` over them. Timeouts are in microseconds, as FFmpeg wants them."""
    from daemon.sources.timeouts import socket_timeout_us

    url = cfg.url.lower()
    opts: dict[str, str] = {}
    # A little over stall_timeout (daemon/sources/timeouts.py): the stall verdict comes first.
    sock_timeout = socket_timeout_us(cfg.stall_timeout, cfg.read_timeout)
    if url.startswith(("rtsp://", "rtsps://")):
        opts = {"rtsp_transport": "tcp", "timeout": sock_timeout}
    elif url.startswith(("http://", "https://")):
        opts = {"timeout": sock_timeout, "reconnect": "0"}
    if cfg.format == "mjpeg" and not cfg.is_file:
        # A raw MJPEG stream has no timestamps: FFmpeg's stream-info probe reads ~5 s of it
        # before av.open returns (measured: 5.06 s against 0.10 s), which eats open_timeout.
        # The first JPEG already says all there is to know.
        opts["probesize"] = "32"
    opts.update(cfg.options)
    return opts


def _has_decoder(stream: Any) -> bool:
    try:
        ctx = stream.codec_context
        return ctx is not None and ctx.codec is not None
    except Exception:  # PyAV raises when FFmpeg has no decoder for the codec id
        return False


def _is_attached_pic(stream: Any) -> bool:
    try:
        import av

        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except Exception:
        return False


def _is_default(stream: Any) -> bool:
    try:
        import av

        return bool(stream.disposition & av.stream.Disposition.default)
    except Exception:
        return False


def pick_video_stream(container: Any) -> Any | None:
    """The video stream ffmpeg would pick, or None (no decodable video besides cover art).

    Score as in ffmpeg: ``width * height + 5000000 * default``; ties go to the lower index."""
    best, best_score = None, -1
    for st in container.streams.video:
        if _is_attached_pic(st) or not _has_decoder(st):
            continue
        w = int(getattr(st.codec_context, "width", 0) or 0)
        h = int(getattr(st.codec_context, "height", 0) or 0)
        score = w * h + 5_000_000 * _is_default(st)
        if score > best_score:
            best, best_score = st, score
    return best


def describe_streams(container: Any) -> str:
    """What the input holds, in words: ``"audio (pcm_alaw), attached picture (mjpeg)"``."""
    parts = []
    for st in container.streams:
        try:
            codec = st.codec_context.name if st.codec_context is not None else None
        except Exception:
            codec = None
        kind = str(getattr(st, "type", None) or "unknown")
        if kind == "video" and _is_attached_pic(st):
            kind = "attached picture"
        elif kind == "video" and not _has_decoder(st):
            kind = "video without a decoder"
        parts.append(f"{kind} ({codec})" if codec else kind)
    return ", ".join(parts) if parts else "no streams"


def no_video_reason(container: Any) -> str:
    return f"{NO_VIDEO} (found: {describe_streams(container)})"
