"""The preview's pipeline side costs nothing without viewers, a stalled viewer never slows it,
and the HTTP side serves the page, MJPEG, snapshots and status (over real sockets)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from daemon.frames import Detections, Frame, FrameResult
from daemon.preview import PreviewHub, PreviewServer, StreamStatus, request_handler
from daemon.vocab import DropReason, StreamState

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


def test_status_from_the_streams_snapshot_and_app() -> None:
    hub = PreviewHub()
    hub.status_source = {"cam1": StreamStatus(StreamState.BACKOFF, False, 3, 2)}.get
    hub.offer(_result(), LABELS, {"note": "hello"})
    hub.offer(_result("cam2"), LABELS)  # a stream the daemon does not know: the hub's own view
    st = hub.stream_status("cam1")
    assert (st["state"], st["reconnects"], st["drops"]) == ("backoff", 3, 2)
    assert st["extra"] == {"note": "hello"}
    st = hub.stream_status("cam2")
    assert (st["state"], st["reconnects"], st["drops"]) == ("up", None, None)


def _metric_state(m: Any, sid: str) -> str:
    states = [s for s in StreamState
              if m.registry.get_sample_value("detectd_stream_state", {"stream": sid, "state": s}) == 1]
    assert len(states) == 1, states
    return states[0].value


@pytest.mark.parametrize("case", ["ok", "missing"])
def test_a_sources_snapshot_says_what_its_metrics_say(tmp_path: Path, case: str) -> None:
    """StreamSource.status() (what the preview and the status log read) agrees with the metrics
    the same source exports: a real file decoded to its end, and a missing file."""
    from prometheus_client import CollectorRegistry

    from daemon.config import parse_config
    from daemon.metrics import Metrics
    from daemon.sources.pyav import StreamSource

    video = tmp_path / "clip.nut"
    if case == "ok":
        with av.open(str(video), "w") as o:
            st = o.add_stream("ffv1", rate=25)
            st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"  # type: ignore[union-attr]
            for i in range(20):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
                for pkt in st.encode(frame):  # type: ignore[union-attr]
                    o.mux(pkt)
            for pkt in st.encode():  # type: ignore[union-attr]
                o.mux(pkt)
    cfg = parse_config({"streams": [{"id": "s", "url": str(video), "loop": False}]}).streams[0]
    m = Metrics(CollectorRegistry())
    m.init_stream("s")
    seen: list[tuple[str, bool, str, float]] = []

    class Sink:
        def put(self, frame: Any, stop: Any = None) -> bool:
            snap = src.status()
            seen.append((snap.state, snap.up, _metric_state(m, "s"),
                         m.registry.get_sample_value("detectd_stream_up", {"stream": "s"})))
            return True

        def is_full(self, stream: str) -> bool:
            return False

    src = StreamSource(cfg, Sink(), m, lambda *a, **k: None)
    assert src.status() == StreamStatus(StreamState.CONNECTING, False, 0, 0)
    src.start()
    assert src.finished.wait(30)
    end = src.status()
    assert end.state == _metric_state(m, "s") and end.up is False
    assert m.registry.get_sample_value("detectd_stream_up", {"stream": "s"}) == 0
    assert end.reconnects == m.registry.get_sample_value("detectd_stream_reconnects_total", {"stream": "s"})
    if case == "ok":
        assert end.state == "ended" and len(seen) == 20
        assert all(s == ("up", True, "up", 1.0) for s in seen), seen[:3]
    else:
        assert end.state == "error" and not seen
    # Drops: the snapshot's count and the exported series are counted by the one call.
    before = src.status().drops
    m.count_drop("s", DropReason.STALE, 2)
    m.count_drop("s", DropReason.ZMQ_HWM)
    exported = sum(m.registry.get_sample_value("detectd_frames_dropped_total", {"stream": "s", "reason": r}) or 0
                   for r in DropReason)
    assert src.status().drops == before + 3 == exported
    m.remove_stream("s")
    assert src.status().drops == 0  # a removed stream's count goes with its series


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


def test_a_removed_stream_leaves_the_page_and_frees_its_place() -> None:
    """A stream removed for good (a reload dropped it, or moved it to another shard) loses its
    tile, its open MJPEG responses end, a late frame of it brings nothing back, and its place
    under max_streams takes a new stream."""
    hub = PreviewHub(max_streams=2)
    with PreviewServer(hub, "127.0.0.1", 0, fps=20) as srv:
        hub.add_stream("a")
        hub.add_stream("b")
        hub.set_geometry("a", [], [])
        hub.offer(_result("a"), LABELS)
        viewer = urllib.request.urlopen(srv.url + "stream/a.mjpg", timeout=10)
        got = b""
        while b"X-Frame-Seq: 1" not in got:  # the first part, however the bytes arrive
            chunk = viewer.read1(1 << 16)
            assert chunk, "the MJPEG response ended before its first picture"
            got += chunk
        hub.remove_stream("a")
        viewer.read()  # the response ends (a socket timeout here would fail the test)
        assert hub.streams() == ["b"] and "a" not in hub.geometry
        hub.offer(_result("a", 1), LABELS)  # a frame still in flight when it was removed
        assert hub.streams() == ["b"] and hub.rejected == 0
        st = json.loads(urllib.request.urlopen(srv.url + "status.json").read())
        assert [x["id"] for x in st["streams"]] == ["b"]
        page = urllib.request.urlopen(srv.url).read().decode()
        assert 'id="tile-a"' not in page and 'id="tile-b"' in page
        hub.add_stream("c")  # the freed place
        assert hub.streams() == ["b", "c"] and hub.rejected == 0
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(srv.url + "stream/a.jpg")
        assert e.value.code == 404
        hub.remove_stream("c")
        hub.add_stream("a")  # back in the configuration: a tile again, from scratch
        hub.offer(_result("a", 2), LABELS)
        assert hub.streams() == ["b", "a"] and hub.frame_seq("a") == 1


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
