"""The preview's pipeline side costs nothing without viewers, a stalled viewer never slows it,
and the HTTP side serves the page, MJPEG, snapshots and status (over real sockets)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import av
import numpy as np
import pytest

from daemon.frames import Detections, Frame, FrameResult
from daemon.preview import PreviewHub, PreviewServer, registry_status, request_handler

LABELS = ["person", "bicycle", "car"]


def _result(stream: str = "cam1", i: int = 0, w: int = 320, h: int = 240, native: bool = False) -> FrameResult:
    img = np.full((h, w, 3), (i * 7) % 250, np.uint8)
    kw = {"native": av.VideoFrame.from_ndarray(img, format="rgb24")} if native else {"image": img}
    f = Frame(stream, i, w, h, None, time.time(), time.monotonic(), **kw)  # type: ignore[arg-type]
    return FrameResult(f, Detections([[10, 10, 100, 120]], [0.9], [2]))


def _jpeg_size(data: bytes) -> tuple[int, int]:
    with av.open(__import__("io").BytesIO(data), format="mjpeg") as c:
        f = next(c.decode(video=0))
        return f.width, f.height


def test_offer_without_viewers_never_encodes_and_bounds_streams() -> None:
    hub = PreviewHub(max_streams=2)
    for i in range(200):
        for s in ("a", "b", "c"):
            hub.offer(_result(s, i), LABELS)
    assert hub.encoded == 0
    assert hub.streams() == ["a", "b"] and hub.rejected == 200
    st = hub.stream_status("a")
    assert st["frames"] == 200 and st["state"] == "up" and st["detections"] == 1
    assert st["fps"] > 0 and st["latency_p50_s"] is not None


def test_jpeg_encoded_once_per_frame_scaled_and_annotated() -> None:
    hub = PreviewHub(max_width=160)
    hub.offer(_result(native=True), LABELS)
    seq, a = hub.jpeg("cam1")  # type: ignore[misc]
    seq2, b = hub.jpeg("cam1")  # type: ignore[misc]
    assert (seq, a) == (seq2, b) and hub.encoded == 1
    assert _jpeg_size(a) == (160, 120)
    rgb = hub.annotated("cam1")
    assert rgb is not None and rgb.shape == (120, 160, 3)
    assert (rgb[59, 5] == (255, 157, 0)).all()  # the "car" outline, scaled by 1/2
    hub.offer(_result(i=1), LABELS)
    assert hub.jpeg("cam1")[0] == seq + 1 and hub.encoded == 2  # type: ignore[index]
    # The pipeline's own array was never drawn on.
    r = _result(i=3)
    hub.offer(r, LABELS)
    hub.jpeg("cam1")
    assert (r.frame.image == 21).all()


def test_status_from_registry_and_app() -> None:
    from daemon.metrics import Metrics

    m = Metrics()
    m.init_stream("cam1")
    m.set_state("cam1", "backoff")
    m.stream_reconnects.labels("cam1").inc(3)
    m.frames_dropped.labels("cam1", "stale").inc(2)
    hub = PreviewHub()
    hub.status_source = registry_status(m.registry)
    hub.offer(_result(), LABELS, {"note": "hello"})
    st = hub.stream_status("cam1")
    assert (st["state"], st["reconnects"], st["drops"]) == ("backoff", 3, 2)
    assert st["extra"] == {"note": "hello"}


def test_status_describes_the_frame_whose_picture_is_shown() -> None:
    """The status line and the picture come from one snapshot: while someone watches, the
    status describes the frame last encoded for viewers, not a newer one nobody sees yet."""
    t = [100.0]
    hub = PreviewHub(clock=lambda: t[0])
    one = _result(i=0)
    three = FrameResult(Frame("cam1", 1, 640, 480, None, time.time(), time.monotonic(),
                              image=np.zeros((480, 640, 3), np.uint8)),
                        Detections([[1, 1, 50, 50], [60, 60, 90, 90], [100, 100, 200, 200]],
                                   [0.9, 0.8, 0.7], [0, 0, 2]))
    hub.offer(one, LABELS)
    seq, _ = hub.jpeg("cam1")  # type: ignore[misc]
    hub.offer(three, LABELS)  # newer frame, not encoded: no viewer sees it yet
    st = hub.stream_status("cam1")
    assert (st["seq"], st["frame_index"], st["detections"], st["width"]) == (seq, 0, 1, 320)
    assert st["frames"] == 2  # the stream-level counter still counts every offer
    seq2, _ = hub.jpeg("cam1")  # type: ignore[misc]
    st = hub.stream_status("cam1")
    assert (st["seq"], st["frame_index"], st["detections"], st["width"]) == (seq2, 1, 3, 640)
    # Nobody watched for a while: the status describes the latest frame.
    hub.offer(one, LABELS)
    t[0] += 60
    st = hub.stream_status("cam1")
    assert (st["seq"], st["frame_index"], st["detections"]) == (3, 0, 1)


def test_mjpeg_part_names_the_frame_the_status_describes() -> None:
    hub = PreviewHub()
    # One part every 4 s: the newer frame offered below stays unsent while the status is read.
    with PreviewServer(hub, "127.0.0.1", 0, fps=0.25) as srv:
        hub.offer(_result(i=0), LABELS)
        resp = urllib.request.urlopen(srv.url + "stream/cam1.mjpg", timeout=5)
        head = b""
        while b"X-Frame-Seq" not in head or not head.endswith(b"\r\n\r\n"):
            head += resp.read(1)
        part_seq = int(head.split(b"X-Frame-Seq: ")[1].split(b"\r\n")[0])
        hub.offer(FrameResult(_result(i=1).frame, Detections.empty()), LABELS)  # not shown yet
        st = json.loads(urllib.request.urlopen(srv.url + "status.json", timeout=5).read())["streams"][0]
        resp.close()
    assert st["seq"] == part_seq == 1 and st["detections"] == 1 and st["frames"] == 2


@pytest.fixture()
def served() -> tuple[PreviewHub, PreviewServer]:
    hub = PreviewHub()
    srv = PreviewServer(hub, "127.0.0.1", 0, fps=20).start()
    yield hub, srv  # type: ignore[misc]
    srv.close()


def test_routes(served: tuple[PreviewHub, PreviewServer]) -> None:
    hub, srv = served
    hub.add_stream("cam1")
    page = urllib.request.urlopen(srv.url).read().decode()
    assert 'id="tile-cam1"' in page and "waiting" in page and "http" not in page.split("<body>")[1]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(srv.url + "stream/cam1.jpg")
    assert e.value.code == 503
    hub.offer(_result(), LABELS)
    jpg = urllib.request.urlopen(srv.url + "stream/cam1.jpg").read()
    assert _jpeg_size(jpg) == (320, 240)
    st = json.loads(urllib.request.urlopen(srv.url + "status.json").read())
    assert st["streams"][0]["id"] == "cam1" and st["streams"][0]["state"] == "up"
    for bad in ("stream/nope.mjpg", "stream/../x.jpg", "nothing"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url + bad)
        assert e.value.code == 404


def test_stalled_viewer_never_slows_the_pipeline(served: tuple[PreviewHub, PreviewServer]) -> None:
    hub, srv = served
    w, h = 1280, 720  # big frames: a stalled socket fills up after a few parts
    hub.offer(_result(w=w, h=h), LABELS)
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream/cam1.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
    good = urllib.request.urlopen(srv.url + "stream/cam1.mjpg")
    times = []
    t_end = time.monotonic() + 2.0
    i = 1
    while time.monotonic() < t_end:
        r = _result(i=i, w=w, h=h)
        t0 = time.perf_counter()
        hub.offer(r, LABELS)
        times.append(time.perf_counter() - t0)
        i += 1
        time.sleep(0.01)
    got = b""
    while got.count(b"Content-Type: image/jpeg") < 5:
        got += good.read1(1 << 16)
    assert hub.viewers == 2
    # A blocked offer() would take the socket timeout (30 s); the tail is GIL hand-over only.
    assert np.median(times) < 0.0002 and max(times) < 0.05, f"offer() worst {max(times) * 1e3:.1f} ms"
    good.close()
    stalled.close()


def test_mount_on_metrics_listener() -> None:
    from daemon.metrics import Metrics, MetricsServer
    from daemon.preview import PreviewApp

    m = Metrics()
    hub = PreviewHub()
    hub.offer(_result(), LABELS)
    ms = MetricsServer("127.0.0.1", 0, m.registry, lambda: {"ok": True})
    app = PreviewApp(hub, fps=10)
    ms.mount("/preview", request_handler(app, "/preview"))
    ms.start()
    try:
        base = f"http://127.0.0.1:{ms.port}"
        assert b"detectd_build_info" in urllib.request.urlopen(base + "/metrics").read()
        page = urllib.request.urlopen(base + "/preview").read().decode()  # redirected to /preview/
        assert 'src="stream/cam1.mjpg"' in page
        r = urllib.request.urlopen(base + "/preview/stream/cam1.mjpg")
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = b""
        while b"\xff\xd9" not in data:
            data += r.read1(1 << 16)
        r.close()
        assert json.loads(urllib.request.urlopen(base + "/preview/status.json").read())["streams"]
    finally:
        app.stop.set()
        ms.stop()


def _released(stream: str = "cam1", i: int = 0) -> FrameResult:
    """A frame whose pixels the pipeline released (handled while nobody watched)."""
    f = Frame(stream, i, 320, 240, None, time.time(), time.monotonic())
    return FrameResult(f, Detections([[10, 10, 100, 120]], [0.9], [2]))


def test_a_new_viewer_gets_a_picture_not_boxes_on_black() -> None:
    """Frames handled before anyone watched carry no pixels: a viewer that asks for a picture
    waits for the next frame that has one (asking marks the stream watched) instead of getting
    the boxes drawn on a black canvas; without ``require_picture`` the boxes-on-black fallback
    remains (a stream that stopped on such a frame still shows its detections)."""
    hub = PreviewHub()
    hub.offer(_released(i=0), LABELS)
    assert not hub.watching
    assert hub.jpeg("cam1", require_picture=True) is None
    assert hub.watching  # the pipeline keeps the pixels of the frames that follow
    hub.offer(_result(i=20, native=True), LABELS)
    got = hub.jpeg("cam1", require_picture=True)
    assert got is not None
    with av.open(__import__("io").BytesIO(got[1]), format="mjpeg") as c:
        pic = next(c.decode(video=0)).to_ndarray(format="rgb24")
    assert abs(float(pic[150:230, 150:300].mean()) - (20 * 7) % 250) < 8  # the frame's grey, not black
    hub.offer(_released(i=2), LABELS)
    fallback = hub.jpeg("cam1")
    assert fallback is not None and fallback[0] == got[0] + 1
