"""The preview page in a real browser (Debian's Chromium, driven by Playwright).

Two setups: the page fed by a PreviewHub from decoded demo frames with known boxes (tests the
page, the MJPEG path and the drawing end to end, independent of the model), and the page served
by the real daemon (`detectd run` as a subprocess) checked against the detections it publishes
on ZeroMQ.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from daemon.frames import Detections, Frame, FrameResult
from daemon.preview import PreviewHub, PreviewServer
from daemon.vision.draw import class_color, default_thickness, draw_detections

ROOT = Path(__file__).resolve().parents[1]

# -- Debian's Chromium via Playwright, and the on-screen pixel check ------------------------------

CHROMIUM = os.environ.get("DETECTD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextmanager
def browser_page(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A Playwright page in Debian's Chromium (never a downloaded browser)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (.ci/apt-packages.txt)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def tile_pixels(page: Any, stream: str) -> np.ndarray:
    """Screenshot of the stream's picture as the browser shows it, RGB uint8."""
    import io

    png = page.locator(f"#tile-{stream} img").screenshot(animations="disabled")
    with av.open(io.BytesIO(png), format="png_pipe") as c:  # PyAV decodes PNG: no Pillow needed
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def wait_for_picture(page: Any, stream: str, timeout_ms: int = 20000) -> None:
    page.wait_for_function(
        """id => { const i = document.querySelector('#tile-' + id + ' img');
                   return i && i.complete !== undefined && i.naturalWidth > 0; }""",
        arg=stream,
        timeout=timeout_ms,
    )


def outline_match(
    shot: np.ndarray,
    box: Sequence[float],
    class_id: int,
    src_size: tuple[int, int],
    tol: float = 70.0,
    exclude: np.ndarray | None = None,
) -> float:
    """Fraction of the box's outline (as drawn by daemon.vision.draw, mapped from source pixels
    to the screenshot) whose pixels are close to the class colour. Each sample looks at a band of
    +-1 screen pixel across the line to allow for scaling and JPEG chroma smear.

    The tag (class colour too) sits on the top edge, so it only helps there; the side and bottom
    edges carry the evidence.

    ``exclude`` (bool (H, W) at the screenshot's size) drops the samples that fall on it: for a
    control, the places where something was drawn (see :func:`drawn_mask`). NaN when fewer than
    20 samples are left.
    """
    sw, sh = src_size
    hgt, wid = shot.shape[:2]
    sx, sy = wid / sw, hgt / sh
    t = default_thickness(sw, sh)
    x0, y0 = max(np.floor(box[0]), 0), max(np.floor(box[1]), 0)
    x1, y1 = min(np.ceil(box[2]), sw), min(np.ceil(box[3]), sh)
    if x1 - x0 < 3 * t or y1 - y0 < 3 * t:
        return float("nan")
    color = np.array(class_color(class_id), np.float32)
    near = np.linalg.norm(shot.astype(np.float32) - color, axis=2) < tol  # (H, W) bool

    def hit(xs: np.ndarray, ys: np.ndarray, axis: str) -> np.ndarray:
        xs = np.clip(np.round(xs * sx).astype(int), 0, wid - 1)
        ys = np.clip(np.round(ys * sy).astype(int), 0, hgt - 1)
        out = np.zeros(len(xs), bool)
        for d in (-1, 0, 1):
            if axis == "h":
                out |= near[np.clip(ys + d, 0, hgt - 1), xs]
            else:
                out |= near[ys, np.clip(xs + d, 0, wid - 1)]
        if exclude is not None:
            out = out[~exclude[ys, xs]]
        return out

    mid = t / 2.0
    xs = np.arange(x0 + t, x1 - t) + 0.5
    ys = np.arange(y0 + t, y1 - t) + 0.5
    samples = [
        hit(xs, np.full(len(xs), y1 - mid), "h"),  # bottom edge
        hit(np.full(len(ys), x0 + mid), ys, "v"),  # left edge
        hit(np.full(len(ys), x1 - mid), ys, "v"),  # right edge
    ]
    allv = np.concatenate(samples)
    return float(allv.mean()) if len(allv) >= (20 if exclude is not None else 1) else float("nan")


def drawn_mask(dets: Sequence[dict[str, Any]], src_size: tuple[int, int], shot_shape: tuple[int, ...],
               grow: int = 3) -> np.ndarray:
    """Where ``daemon.vision.draw`` puts anything (outlines and tags) for these published
    detections, as a bool (H, W) mask at the screenshot's size, grown by ``grow`` screen pixels
    (JPEG smear, scaling, and a frame or two of motion between the picture and the message)."""
    sw, sh = src_size
    canvas = np.zeros((sh, sw, 3), np.uint8)
    labels = [""] * (max((d["class_id"] for d in dets), default=-1) + 1)
    for d in dets:  # the tags' text, hence their width, as the daemon drew them
        labels[d["class_id"]] = d["label"]
    if dets:
        draw_detections(canvas, np.array([d["box"] for d in dets], np.float32),
                        np.array([d["score"] for d in dets], np.float32),
                        np.array([d["class_id"] for d in dets], np.int32), labels)
    # Anything drawn differs from the black canvas: tags' text is drawn in black or white on the
    # class colour, inside the tag's filled rectangle.
    drawn = canvas.any(axis=2)
    hgt, wid = shot_shape[:2]
    rows = np.minimum((np.arange(hgt) + 0.5) * sh / hgt, sh - 1).astype(int)
    cols = np.minimum((np.arange(wid) + 0.5) * sw / wid, sw - 1).astype(int)
    mask = drawn[rows][:, cols]
    out = mask.copy()
    for dy in range(-grow, grow + 1):
        for dx in range(-grow, grow + 1):
            out |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def shifted(box: Sequence[float], dx: float, dy: float) -> list[float]:
    return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]


# -- the page fed by a hub --------------------------------------------------------------------

LABELS = ["person", "bicycle", "car"]
# Fixed boxes in source pixels (640x272 demo frames): a "car" and a "person".
BOXES = np.array([[60, 40, 300, 220], [380, 70, 560, 250]], np.float32)
CLASSES = np.array([2, 0], np.int32)


def _demo_video() -> Path:
    from daemon.models.assets import fetch_demo_video

    try:
        return fetch_demo_video(progress=False)
    except Exception as exc:  # pragma: no cover - offline machine without a warm cache
        pytest.skip(f"demo video unavailable: {exc}")


class _Feeder(threading.Thread):
    """Offers demo frames to the hub at ~25 frames/s, native PyAV frames like the daemon's
    sources hand over (the hub converts only when someone watches)."""

    def __init__(self, hub: PreviewHub, path: Path) -> None:
        super().__init__(daemon=True)
        self.hub, self.path, self.stop = hub, path, threading.Event()
        self.offer_seconds: list[float] = []

    def run(self) -> None:
        dets = Detections(BOXES, np.array([0.91, 0.77], np.float32), CLASSES)
        i = 0
        while not self.stop.is_set():
            with av.open(str(self.path)) as c:
                for vf in c.decode(video=0):
                    if self.stop.is_set():
                        return
                    now = time.monotonic()
                    f = Frame("cam1", i, vf.width, vf.height, vf.time, time.time(), now, native=vf)
                    t0 = time.perf_counter()
                    self.hub.offer(FrameResult(f, dets), LABELS, {"state": "up", "drops": 0, "reconnects": 0})
                    self.offer_seconds.append(time.perf_counter() - t0)
                    i += 1
                    time.sleep(0.04)


def test_page_shows_tile_boxes_and_status_in_chromium() -> None:
    hub = PreviewHub()
    hub.info = {"model": "test boxes"}
    feeder = _Feeder(hub, _demo_video())
    feeder.start()
    try:
        with PreviewServer(hub, "127.0.0.1", 0, fps=5) as srv, browser_page() as page:
            page.goto(srv.url)
            page.wait_for_selector("#tile-cam1 img")
            wait_for_picture(page, "cam1")
            page.wait_for_function("document.body.dataset.ready === '1'")
            time.sleep(0.5)  # a few MJPEG parts in
            status = page.inner_text("#tile-cam1 .status")
            assert "cam1" in status and "up" in status, status
            assert "frames/s" in status and "p99" in status and "drops 0" in status, status
            assert page.locator(".tile").count() == 1
            assert page.eval_on_selector("#tile-cam1 img", "i => i.naturalWidth") == 640
            assert hub.viewers == 1
            shot = tile_pixels(page, "cam1")
            for box, cid in zip(BOXES.tolist(), CLASSES.tolist()):
                got = outline_match(shot, box, cid, (640, 272))
                assert got > 0.8, f"box {box} class {cid}: only {got:.0%} of its outline on screen"
                # The same check on a box 25 px off finds (almost) nothing: the test can fail.
                assert outline_match(shot, shifted(box, 25, 12), cid, (640, 272)) < 0.25
            page.screenshot(path=str(Path(os.environ.get("DETECTD_TEST_ARTIFACTS", "/tmp")) / "preview-page.png"))
        # The browser closed: its MJPEG connection ended and the hub knows.
        deadline = time.monotonic() + 5
        while hub.viewers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.viewers == 0
    finally:
        feeder.stop.set()
        feeder.join(5)
    # offer() stayed O(1) while a browser watched: no encoding on the pipeline's thread. (Its
    # tail is the GIL's 5 ms switch interval while a viewer thread draws, not waiting on it.)
    assert np.median(feeder.offer_seconds) < 0.0002
    assert max(feeder.offer_seconds) < 0.05


# -- the real daemon -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_page_against_published(url: str, msgs: list[tuple[float, dict[str, Any]]],
                                 shot_path: Path | None = None) -> None:
    """Open the page, wait for cam1's picture and 'up', then find, among the detections
    published around each screenshot, the frame whose boxes the screenshot shows."""
    with browser_page() as page:
        page.goto(url)
        wait_for_picture(page, "cam1", 30000)
        page.wait_for_function(
            "() => { const s = document.querySelector('#tile-cam1 .state');"
            " return s && s.textContent === 'up'; }", timeout=15000,
        )  # fmt: skip
        status = page.inner_text("#tile-cam1 .status")
        assert "frames/s" in status and "p99" in status, status
        best = 0.0
        control = 1.0
        checked = 0
        for _attempt in range(6):  # the picture moves: try a few screenshots
            time.sleep(0.7)
            t_shot = time.monotonic()
            shot = tile_pixels(page, "cam1")
            recent = [m for t, m in msgs if t_shot - 2.0 <= t <= t_shot + 0.3]
            for m in recent:
                boxes = [d for d in m["detections"] if (d["box"][2] - d["box"][0]) > 30
                         and (d["box"][3] - d["box"][1]) > 30]
                if not boxes:
                    continue
                size = (m["width"], m["height"])
                score = min(outline_match(shot, d["box"], d["class_id"], size) for d in boxes)
                if score > best:
                    best = score
                    # The control: the same check on outlines 25 px off, sampled only where
                    # nothing was drawn. A shifted outline crosses its own box's tag and, in a
                    # street scene, neighbouring boxes of the same class colour: those are
                    # drawn pixels, and counting them measured the crowd, not the check.
                    mask = drawn_mask(m["detections"], size, shot.shape)
                    ctl = [outline_match(shot, shifted(d["box"], 25, 12), d["class_id"], size, exclude=mask)
                           for d in boxes]
                    ctl = [c for c in ctl if not np.isnan(c)]
                    control = float(np.mean(ctl)) if ctl else float("nan")
                    naive = float(np.mean([outline_match(shot, shifted(d["box"], 25, 12), d["class_id"], size)
                                           for d in boxes]))
                    print(f"preview check: best {best:.2f} control {control:.2f} (without the mask "
                          f"{naive:.2f}), {len(m['detections'])} detections")
                checked += 1
            if best > 0.8:
                break
        assert checked, "no published frame with a box big enough to check"
        assert best > 0.8, f"best match of published boxes on screen: {best:.0%}"
        assert not np.isnan(control), "no shifted outline clear of drawn boxes to check against"
        assert control < 0.4, f"shifted boxes also matched {control:.0%}: check is too loose"
        if shot_path is not None:
            page.screenshot(path=str(shot_path))
            keep = os.environ.get("DETECTD_SCREENSHOT")  # to look at the page: a path to copy it to
            if keep:
                shutil.copy(shot_path, keep)


@pytest.mark.slow
def test_daemon_preview_matches_published_detections(tmp_path: Path) -> None:
    zmq = pytest.importorskip("zmq")
    _demo_video()
    pub, met, prev = _free_port(), _free_port(), _free_port()
    cfg = tmp_path / "detectd.yaml"
    cfg.write_text(
        "streams:\n"
        "  - {id: cam1, url: 'demo://bikes.mp4', loop: true, realtime: true}\n"
        f"publish: {{endpoint: 'tcp://127.0.0.1:{pub}'}}\n"
        f"metrics: {{listen: '127.0.0.1:{met}'}}\n"
        f"preview: {{enabled: true, listen: '127.0.0.1:{prev}', fps: 5}}\n"
        "logging: {status_interval: 0}\n"
    )
    from tests.harness import detectd_command

    cmd = detectd_command()  # this checkout's code, not the console script's
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([*cmd, "run", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"detections/cam1/")
    sub.connect(f"tcp://127.0.0.1:{pub}")
    msgs: list[tuple[float, dict[str, Any]]] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            if sub.poll(100):
                _topic, payload = sub.recv_multipart()
                msgs.append((time.monotonic(), json.loads(payload)))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{prev}/"
    try:
        deadline = time.monotonic() + 180  # first run may export the model to ONNX
        while True:
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url + "status.json", timeout=2).read()
                if msgs:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "daemon did not serve the preview in time"
            time.sleep(0.5)
        check_page_against_published(url, msgs, tmp_path / "page.png")
    finally:
        stop.set()
        reader.join(2)
        sub.close(0)
        ctx.term()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
