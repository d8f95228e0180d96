"""``detectd annotate``: the output decodes, keeps the input's size and frame count, and differs
from the input exactly where the reported boxes are drawn -- checked pixel for pixel with a
lossless encoder, and against the model run independently on sampled frames."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from daemon.vision.draw import class_color, default_font_scale, default_thickness

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _demo() -> Path:
    from daemon.models.assets import fetch_demo_video

    try:
        return fetch_demo_video(progress=False)
    except Exception as exc:  # pragma: no cover - offline without a warm cache
        pytest.skip(f"demo video unavailable: {exc}")


def _make_clip(dst: Path, n: int, codec: str, pix_fmt: str, crop: tuple[int, int] | None = None,
               start: int = 60) -> Path:
    """``n`` frames of the demo video (from frame ``start``, where cars and people are), optionally
    cropped to an odd size, re-encoded: an input file nobody tuned the code on."""
    with av.open(str(_demo())) as src, av.open(str(dst), "w") as out:
        ost = out.add_stream(codec, rate=25)
        ost.pix_fmt = pix_fmt
        k = 0
        for i, f in enumerate(src.decode(video=0)):
            if i < start:
                continue
            rgb = f.to_ndarray(format="rgb24")
            if crop:
                rgb = np.ascontiguousarray(rgb[: crop[1], : crop[0]])
            if k == 0:
                ost.width, ost.height = rgb.shape[1], rgb.shape[0]
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts, vf.time_base = k, Fraction(1, 25)
            for p in ost.encode(vf):
                out.mux(p)
            k += 1
            if k == n:
                break
        for p in ost.encode(None):
            out.mux(p)
    return dst


def _frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _annotate(inp: Path, out: Path, *extra: str) -> tuple[list[dict[str, Any]], str]:
    exe = ROOT / ".venv" / "bin" / "detectd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "daemon"]
    jl = out.with_suffix(".jsonl")
    r = subprocess.run(
        [*cmd, "annotate", str(inp), "--out", str(out), "--json", str(jl), *extra],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in jl.read_text().splitlines()], r.stderr


def _labels() -> list[str]:
    from daemon.models.info import ModelInfo
    from daemon.models.resolve import fp32_model
    from daemon.config import ModelConfig

    return ModelInfo.from_onnx(fp32_model(ModelConfig(), progress=False)).labels


def _allowed(shape: tuple[int, ...], dets: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    """Pixels annotate may change, derived from the reported boxes and the drawing rules alone
    (not from draw.py's own layout, so a drawing bug cannot widen what the test allows): each
    box's outline, t px thick inside the box edge, and its tag, 8*s+2s px high, text width wide,
    above the box or just inside its top. The JSON rounds boxes to 1/100 px, so an edge within
    0.005 px of a pixel boundary may land on either side of it."""
    h, w = shape[:2]
    t, s = default_thickness(w, h), default_font_scale(w, h)
    m = np.zeros((h, w), bool)
    inside = np.zeros((h, w), bool)
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        lo = [int(np.floor(v - 0.005)) for v in (x0, y0)] + [int(np.ceil(v - 0.005)) for v in (x1, y1)]
        hi = [int(np.floor(v + 0.005)) for v in (x0, y0)] + [int(np.ceil(v + 0.005)) for v in (x1, y1)]
        ox0, oy0 = max(lo[0], 0), max(lo[1], 0)
        ox1, oy1 = min(hi[2], w), min(hi[3], h)
        m[oy0:oy1, ox0:ox1] = True
        ix0, iy0, ix1, iy1 = hi[0] + t, hi[1] + t, lo[2] - t, lo[3] - t
        if ix1 > ix0 and iy1 > iy0:
            inside[max(iy0, 0) : iy1, max(ix0, 0) : ix1] = True
        name = labels[d["class_id"]]
        text = f"{name} {d['score']:.2f}"
        tw, th = (len(text) * 6 - 1) * s + 2 * s, 8 * s + 2 * s
        tx0 = min(ox0, max(w - tw, 0))
        m[max(oy0 - th, 0) : oy0 + th + 1, max(tx0 - 1, 0) : tx0 + tw + 1] = True
    # Inside a box nothing is drawn, unless another box's outline or tag lies there.
    others = np.zeros_like(m)
    for d in dets:
        x0, y0, x1, y1 = d["box"]
        b = [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]
        ring = np.zeros_like(m)
        ring[max(b[1] - 1, 0) : b[3] + 1, max(b[0] - 1, 0) : b[2] + 1] = True
        ring[b[1] + t + 1 : b[3] - t - 1, b[0] + t + 1 : b[2] - t - 1] = False
        others |= ring
        name = labels[d["class_id"]]
        text = f"{name} {d['score']:.2f}"
        tw, th = (len(text) * 6 - 1) * s + 2 * s, 8 * s + 2 * s
        tx0 = min(max(b[0], 0), max(w - tw, 0))
        others[max(b[1] - th - 1, 0) : b[1] + th + 1, max(tx0 - 1, 0) : tx0 + tw + 1] = True
    return m & ~(inside & ~others)


def _edge_hits(img: np.ndarray, box: list[float], cid: int) -> float:
    """Fraction of the box's bottom/left/right outline found in the class colour (+-1 px)."""
    h, w = img.shape[:2]
    x0, y0 = int(np.floor(box[0])), int(np.floor(box[1]))
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    c = np.array(class_color(cid), np.uint8)
    eq = (img == c).all(axis=2)
    hits = []
    for x in range(x0 + 3, x1 - 3):
        hits.append(eq[max(y1 - 3, 0) : min(y1 + 1, h), x].any())
    for y in range(y0 + 3, y1 - 3):
        hits.append(eq[y, max(x0 - 1, 0) : min(x0 + 3, w)].any())
        hits.append(eq[y, max(x1 - 3, 0) : min(x1 + 1, w)].any())
    return float(np.mean(hits)) if hits else 1.0


def test_lossless_output_differs_from_input_exactly_around_the_boxes(tmp_path: Path) -> None:
    clip = _make_clip(tmp_path / "in.mkv", 40, "ffv1", "yuv420p")
    out = tmp_path / "out.mkv"
    per_frame, _ = _annotate(clip, out, "--codec", "ffv1", "-q")
    src, dst = _frames(clip), _frames(out)
    assert len(dst) == len(src) == len(per_frame) == 40
    assert dst[0].shape == src[0].shape == (272, 640, 3)
    labels = _labels()
    n_boxes = 0
    for i, (a, b, rec) in enumerate(zip(src, dst, per_frame)):
        assert rec["frame"] == i and (rec["width"], rec["height"]) == (640, 272)
        changed = (a != b).any(axis=2)
        dets = rec["detections"]
        if not dets:
            assert not changed.any(), f"frame {i}: no detections but pixels changed"
            continue
        allowed = _allowed(a.shape, dets, labels)
        stray = changed & ~allowed
        assert not stray.any(), f"frame {i}: {stray.sum()} pixels changed away from every box"
        for d in dets:
            bw, bh = d["box"][2] - d["box"][0], d["box"][3] - d["box"][1]
            if bw < 12 or bh < 12:
                continue
            n_boxes += 1
            hit = _edge_hits(b, d["box"], d["class_id"])
            # Other boxes and tags may cover parts of an outline; most of it must be there.
            assert hit > 0.6, f"frame {i}: box {d} drawn on only {hit:.0%} of its outline"
    assert n_boxes >= 20, f"only {n_boxes} boxes checked: the clip should show cars and people"


def test_reported_boxes_are_the_models_for_the_same_frame(tmp_path: Path) -> None:
    """The JSON (what was drawn) is the model's output for *that* frame: run the daemon's
    vision path on a few decoded frames independently and compare."""
    from daemon.backends import create_backend
    from daemon.config import ModelConfig
    from daemon.models.info import ModelInfo
    from daemon.models.resolve import fp32_model
    from daemon.vision.letterbox import letterbox_av
    from daemon.vision.yolo import postprocess

    clip = _make_clip(tmp_path / "in.mkv", 12, "ffv1", "yuv420p", start=120)
    per_frame, _ = _annotate(clip, tmp_path / "out.mkv", "--codec", "ffv1", "-q")
    mc = ModelConfig()
    path = fp32_model(mc, progress=False)
    info = ModelInfo.from_onnx(path)
    be = create_backend("onnxruntime", path, info, mc)
    try:
        with av.open(str(clip)) as c:
            frames = list(c.decode(video=0))  # native frames, as the daemon's sources give
        for i in (0, 5, 11):
            x, lb = letterbox_av(frames[i], info.width, info.height)
            d = postprocess(be.infer(x[None]), [lb], info.heads, mc.conf_threshold, mc.nms_threshold)[0]
            got = per_frame[i]["detections"]
            assert [g["class_id"] for g in got] == d.class_ids.tolist()
            np.testing.assert_allclose(np.array([g["box"] for g in got]).reshape(-1, 4), d.boxes, atol=0.011)
    finally:
        be.close()


def test_default_mp4_decodes_with_same_size_and_count_and_odd_sizes(tmp_path: Path) -> None:
    clip = _make_clip(tmp_path / "in.mp4", 30, "libx264", "yuv420p")
    out = tmp_path / "annotated.mp4"
    per_frame, stderr = _annotate(clip, out)
    assert "annotate: 30/30 frames (100%)" in stderr and "wrote" in stderr
    src, dst = _frames(clip), _frames(out)
    assert len(dst) == len(src) == 30 and dst[0].shape == src[0].shape
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    # Lossy: away from the boxes the picture is the input's, up to codec noise.
    labels = _labels()
    far_diffs = []
    for a, b, rec in zip(src, dst, per_frame):
        near = _allowed(a.shape, rec["detections"], labels)
        grown = np.zeros_like(near)
        ys, xs = np.nonzero(near)
        for dy in (-8, 0, 8):
            for dx in (-8, 0, 8):
                grown[np.clip(ys + dy, 0, a.shape[0] - 1), np.clip(xs + dx, 0, a.shape[1] - 1)] = True
        far_diffs.append(np.abs(a.astype(int) - b.astype(int))[~grown].mean())
    assert max(far_diffs) < 4.0, far_diffs
    assert not list(tmp_path.glob(".annotated.mp4.*")), "the temporary file stayed behind"

    # An odd frame size, which 4:2:0 H.264 cannot hold: same size out (4:4:4).
    odd = _make_clip(tmp_path / "odd.mkv", 10, "ffv1", "yuv420p", crop=(321, 203))
    out2 = tmp_path / "odd.mp4"
    _annotate(odd, out2, "-q")
    frames = _frames(out2)
    assert len(frames) == 10 and frames[0].shape == (203, 321, 3)


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    exe = ROOT / ".venv" / "bin" / "detectd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "daemon"]
    r = subprocess.run([*cmd, "annotate", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o.mp4")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such file" in r.stderr
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    r = subprocess.run([*cmd, "annotate", str(junk), "--out", str(tmp_path / "o.mp4")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "junk.mp4" in r.stderr and "Traceback" not in r.stderr
    # Neither the output nor the atomic writer's temporary file (.o.mp4.<pid>.<random>.part.mp4).
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob(".o.mp4.*"))


def test_max_frames_stops_early_and_zero_is_refused(tmp_path: Path) -> None:
    clip = _make_clip(tmp_path / "in.mp4", 30, "libx264", "yuv420p")
    out = tmp_path / "first.mp4"
    per_frame, _ = _annotate(clip, out, "--max-frames", "7", "-q")
    assert len(per_frame) == 7 and len(_frames(out)) == 7
    exe = ROOT / ".venv" / "bin" / "detectd"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "daemon"]
    r = subprocess.run([*cmd, "annotate", str(clip), "--out", str(tmp_path / "z.mp4"), "--max-frames", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--max-frames" in r.stderr and ">= 1" in r.stderr
