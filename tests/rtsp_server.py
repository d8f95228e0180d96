#!/usr/bin/python3
"""A real RTSP server for the tests, run with Debian's /usr/bin/python3 (python3-gi + GStreamer).

Not part of the daemon and not imported by it: ``tests/rtsp_fixtures.py`` starts it as a
subprocess. Modes:

``media`` (default)
    GStreamer's RTSP server (gst-rtsp-server, the one many cameras' firmware is built on)
    streaming H.264 over RTP: a live ``videotestsrc`` pattern encoded by x264 at ``--fps``, or an
    MP4 file (``--source PATH``, H.264, played once at its own rate, then end of stream).
    ``--user/--password`` turn on HTTP Basic authentication (GstRTSPAuth): a client without
    them, or with wrong ones, gets ``401 Unauthorized``. ``--freeze-after S`` stops sending media
    S seconds after each client starts playing, keeping the session and the TCP connection open
    (the camera whose encoder hung: a stall *after* frames flowed). ``--frame-interval S`` sends
    one frame (a keyframe) every S seconds: a camera in night or timelapse mode.

``--audio-only-for S`` (media mode): for the first S seconds every client gets an audio-only
    session (A-law, the track of a camera still booting or on an audio profile); from then on
    the configured video. ``-1`` = audio only for ever.

``silent``
    A tiny raw-TCP RTSP server that answers OPTIONS/DESCRIBE/SETUP/PLAY (and keep-alives)
    correctly, with an SDP for H.264 320x240, and then never sends a single media packet: the
    stall that happens right after connecting.

Prints ``LISTENING <port>`` on stdout once the port accepts connections. Exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import signal
import socket
import sys
import threading


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mount", action="append", default=None,
                   help="mount path (repeatable; default /stream)")
    p.add_argument("--mode", choices=("media", "silent"), default="media")
    p.add_argument("--source", default="testsrc", help="'testsrc' or the path of an H.264 MP4 file")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--freeze-after", type=float, default=None, metavar="S")
    p.add_argument("--audio-only-for", type=float, default=None, metavar="S")
    p.add_argument("--frame-interval", type=float, default=None, metavar="S",
                   help="one frame every S seconds (each a keyframe; overrides --fps): a night-mode "
                        "or timelapse camera")
    a = p.parse_args(argv)
    a.mount = a.mount or ["/stream"]
    for m in a.mount:
        if not m.startswith("/"):
            p.error(f"--mount must start with '/': {m!r}")
    if (a.user is None) != (a.password is None):
        p.error("--user and --password go together")
    return a


# --------------------------------------------------------------------------- media (GStreamer)

def launch_line(a: argparse.Namespace) -> str:
    if a.source == "testsrc" and a.frame_interval is not None:
        ms = max(1, round(a.frame_interval * 1000))
        src = (
            f"videotestsrc is-live=true pattern=ball ! "
            f"video/x-raw,width={a.width},height={a.height},framerate=1000/{ms} ! "
            f"videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=1 "
            f"bframes=0 threads=1 ! video/x-h264,profile=constrained-baseline ! "
        )
    elif a.source == "testsrc":
        src = (
            # A moving ball: every frame differs, as from a real camera.
            f"videotestsrc is-live=true pattern=ball ! "
            f"video/x-raw,width={a.width},height={a.height},framerate={a.fps}/1 ! "
            f"videoconvert ! "
            f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={a.fps} bframes=0 "
            f"threads=1 ! video/x-h264,profile=constrained-baseline ! "
        )
    else:
        # The file's own H.264 packets, no re-encoding; the server paces them at the file's rate.
        src = f"filesrc location={a.source} ! qtdemux ! h264parse ! "
    valve = "valve name=freeze drop=false ! " if a.freeze_after is not None else ""
    return f"( {src}{valve}rtph264pay name=pay0 pt=96 config-interval=1 )"


AUDIO_ONLY = ("( audiotestsrc is-live=true wave=sine ! audio/x-raw,rate=8000,channels=1 ! alawenc ! "
              "rtppcmapay name=pay0 pt=8 )")


def run_media(a: argparse.Namespace) -> int:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(a.host)
    server.set_service(str(a.port))

    if a.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
        server.set_auth(auth)

    # Fail at start, with GStreamer's message, rather than answer every client "503".
    try:
        Gst.parse_launch(launch_line(a)[1:-1])
    except GLib.Error as e:
        print(f"bad pipeline ({e.message}): {launch_line(a)}", file=sys.stderr, flush=True)
        return 1

    for mount in a.mount:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(AUDIO_ONLY if a.audio_only_for is not None else launch_line(a))
        if a.audio_only_for is not None and a.audio_only_for >= 0:
            def video_now(f: object = factory) -> bool:
                f.set_launch(launch_line(a))  # type: ignore[attr-defined]
                print("VIDEO", flush=True)
                return False

            GLib.timeout_add(int(a.audio_only_for * 1000), video_now)
        factory.set_shared(False)  # each client gets its own pipeline: kill/EOS per client
        factory.set_eos_shutdown(False)
        if a.user is not None:
            perms = GstRtspServer.RTSPPermissions()
            perms.add_permission_for_role("user", "media.factory.access", True)
            perms.add_permission_for_role("user", "media.factory.construct", True)
            factory.set_permissions(perms)
        if a.freeze_after is not None:
            def on_configure(_f: object, media: object) -> None:
                element = media.get_element()  # type: ignore[attr-defined]
                valve = element.get_by_name("freeze")

                def freeze() -> bool:
                    valve.set_property("drop", True)
                    print("FROZEN", flush=True)
                    return False

                # Counted from when the pipeline is built (DESCRIBE), a fraction of a second
                # before PLAY: good enough for "frames flowed, then stopped".
                GLib.timeout_add(int(a.freeze_after * 1000), freeze)

            factory.connect("media-configure", on_configure)
        server.get_mount_points().add_factory(mount, factory)

    if server.attach(None) == 0:
        print(f"cannot listen on {a.host}:{a.port}", file=sys.stderr, flush=True)
        return 1
    # The pool of client sessions is only cleaned when asked; do it so long runs stay flat.
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])

    def stop(*_: object) -> bool:
        loop.quit()
        return False

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, stop)
    print(f"LISTENING {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


# --------------------------------------------------------------------------- silent (raw TCP)

# SPS/PPS of x264 constrained-baseline 320x240: lets a client parse the stream description and
# build its decoder, so the only thing missing is the media itself.
# (Taken from the caps of rtph264pay after the x264enc of media mode.)
SPS = base64.b64decode("Z0LAFdoFB+wFqDAwNSgAAAMACAAAAwGUeLF1")
PPS = base64.b64decode("aM48gA==")


def sdp(host: str) -> str:
    sprop = f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}"
    return (
        "v=0\r\n"
        f"o=- 0 0 IN IP4 {host}\r\n"
        "s=detectd silent test server\r\n"
        "t=0 0\r\n"
        "a=control:*\r\n"
        "m=video 0 RTP/AVP 96\r\n"
        "c=IN IP4 0.0.0.0\r\n"
        "a=rtpmap:96 H264/90000\r\n"
        f"a=fmtp:96 packetization-mode=1;profile-level-id=42c015;sprop-parameter-sets={sprop}\r\n"
        "a=control:track1\r\n"
        "a=framerate:25\r\n"
    )


def handle_silent(conn: socket.socket, host: str, mounts: list[str]) -> None:
    buf = b""
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0") or 0)
                buf = buf[n:]  # request bodies (SET_PARAMETER) are ignored
                method, url = (lines[0].split(" ") + ["", ""])[:2]
                cseq = headers.get("cseq", "0")
                path = "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url
                extra = ""
                body = ""
                status = "200 OK"
                if method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER\r\n"
                elif method == "DESCRIBE":
                    if not any(path.rstrip("/") == m.rstrip("/") for m in mounts):
                        status = "404 Not Found"
                    else:
                        body = sdp(host)
                        extra = f"Content-Type: application/sdp\r\nContent-Base: {url.rstrip('/')}/\r\n"
                elif method == "SETUP":
                    transport = headers.get("transport", "")
                    if "interleaved" not in transport:
                        status = "461 Unsupported Transport"
                    else:
                        extra = f"Transport: {transport}\r\nSession: 12345678;timeout=60\r\n"
                elif method in ("PLAY", "GET_PARAMETER", "SET_PARAMETER", "PAUSE"):
                    extra = "Session: 12345678;timeout=60\r\n"
                    if method == "PLAY":
                        extra += f"RTP-Info: url={url.rstrip('/')}/track1;seq=0;rtptime=0\r\nRange: npt=0.000-\r\n"
                elif method == "TEARDOWN":
                    conn.sendall(f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n".encode())
                    return
                else:
                    status = "501 Not Implemented"
                resp = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n{extra}"
                if body:
                    resp += f"Content-Length: {len(body)}\r\n"
                resp += "\r\n" + body
                try:
                    conn.sendall(resp.encode())
                except OSError:
                    return


def run_silent(a: argparse.Namespace) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(16)
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        srv.close()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"LISTENING {srv.getsockname()[1]}", flush=True)
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except OSError:
            break
        threading.Thread(target=handle_silent, args=(conn, a.host, a.mount), daemon=True).start()
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_silent(a) if a.mode == "silent" else run_media(a)


if __name__ == "__main__":
    sys.exit(main())
