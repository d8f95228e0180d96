"""PNG charts from the benchmarks' JSON results, for the README.

    .venv/bin/python bench/plots.py [bench/results/*.json ...] [--out bench/plots]

Each input file gives up to three charts, named after the file's ``benchmark`` (else its stem):

* ``<name>-throughput.png``: frames/s per pipeline (e.g. INT8 vs FP32 vs OpenCV DNN), bars at
  the median with the min..max of the rounds as whiskers, and each bar's ratio to the first.
* ``<name>-stages.png``: latency distribution per stage (decode, preprocess, infer, ...).
* ``<name>-timeline.png``: latency percentiles (and frames/s) over time, e.g. a soak run.

Input format (every section optional; unknown keys ignored)::

    {
      "benchmark": "e2e",                       # chart titles and file names
      "machine": "x86_64 2 cores" | {...},      # shown under the title
      "throughput": [                           # -> throughput chart, in this order
        {"name": "FP32 ONNX Runtime", "fps": 48.1, "rounds": [47.0, 48.1, 49.3]},
        ...
      ],
      "stages": {                               # -> stages chart, seconds
        "decode": {"samples": [0.0012, ...]},   #   raw samples: box plot (p1..p99 whiskers)
        "infer":  {"p50": 0.021, "p90": 0.024, "p99": 0.031, "max": 0.05},  # or percentiles
        ...
      },
      "timeline": {                             # -> timeline chart
        "t": [0, 10, 20, ...],                  #   seconds since start
        "latency_p50_s": [...], "latency_p99_s": [...],   # any keys ending in _s: lines (ms)
        "fps": [...]                            #   optional, right-hand axis
      }
    }

The end-to-end benchmark's own shape is read too: ``"fps": {"bare_ort": ..., "daemon": ...}``
becomes the throughput chart and ``"overhead_ms_640x360": {stage: ms}`` a stages chart (means).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["decode", "preprocess", "infer", "postprocess", "publish", "total", "end_to_end"]
PRETTY = {"bare_ort": "bare ONNX Runtime", "daemon": "detectd end to end", "opencv": "OpenCV DNN"}


def normalize(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The canonical shape (see the module docstring) from any accepted input shape."""
    out: dict[str, Any] = {"benchmark": doc.get("benchmark") or name, "machine": doc.get("machine")}
    thr = doc.get("throughput")
    if thr is None and isinstance(doc.get("fps"), dict):
        rounds = doc.get("rounds") or {}
        thr = [{"name": PRETTY.get(k, k), "fps": v, "rounds": rounds.get(k, [])}
               for k, v in doc["fps"].items()]  # fmt: skip
    if thr:
        out["throughput"] = [dict(r) for r in thr if isinstance(r.get("fps"), (int, float))]
    stages = doc.get("stages")
    if stages is None:
        for key, val in doc.items():
            if key.startswith("overhead_ms") and isinstance(val, dict):
                stages = {k: {"mean": v / 1000.0} for k, v in val.items()}
    if stages:
        out["stages"] = stages
    if isinstance(doc.get("timeline"), dict) and doc["timeline"].get("t"):
        out["timeline"] = doc["timeline"]
    return out


def _subtitle(doc: dict[str, Any]) -> str:
    m = doc.get("machine")
    if isinstance(m, dict):
        return ", ".join(f"{k} {v}" for k, v in m.items() if k != "platform")
    return str(m) if m else ""


def _finish(fig: Any, ax: Any, title: str, doc: dict[str, Any], path: Path) -> Path:
    ax.set_title(title, fontsize=12, loc="left")
    sub = _subtitle(doc)
    if sub:
        fig.text(0.99, 0.01, sub, ha="right", va="bottom", fontsize=8, color="#666")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_throughput(doc: dict[str, Any], path: Path) -> Path:
    rows = doc["throughput"]
    names = [r["name"] for r in rows]
    fps = np.array([float(r["fps"]) for r in rows])
    lo = np.array([min(r.get("rounds") or [f]) for r, f in zip(rows, fps)])
    hi = np.array([max(r.get("rounds") or [f]) for r, f in zip(rows, fps)])
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(rows) + 1.6), dpi=110)
    y = np.arange(len(rows))[::-1]
    colors = plt.get_cmap("tab10")(np.arange(len(rows)) % 10)
    ax.barh(y, fps, color=colors, height=0.6)
    ax.errorbar(fps, y, xerr=[fps - lo, hi - fps], fmt="none", ecolor="#333", capsize=3, lw=1)
    for yi, f, h in zip(y, fps, hi):
        ax.text(h + fps.max() * 0.01, yi, f"{f:.1f}  ({f / fps[0]:.2f}x)", va="center", fontsize=9)
    ax.set_yticks(y, names)
    ax.set_xlabel("frames/s (median round; whiskers: min..max of rounds)")
    ax.set_xlim(0, hi.max() * 1.3)
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, ax, f"{doc['benchmark']}: throughput", doc, path)


def _stage_names(stages: dict[str, Any]) -> list[str]:
    known = [s for s in STAGE_ORDER if s in stages]
    return known + [s for s in stages if s not in known]


def plot_stages(doc: dict[str, Any], path: Path) -> Path:
    stages = doc["stages"]
    names = _stage_names(stages)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    with_samples = [n for n in names if stages[n].get("samples")]
    if with_samples and len(with_samples) == len(names):
        data = [np.asarray(stages[n]["samples"], float) * 1000 for n in names]
        ax.boxplot(data, whis=(1, 99), showfliers=False, tick_labels=names)
        for i, d in enumerate(data, start=1):
            ax.text(i, np.percentile(d, 99), f"p99 {np.percentile(d, 99):.2f}", ha="center",
                    va="bottom", fontsize=8)
        ax.set_ylabel("milliseconds per frame (box: p25..p75, whiskers: p1..p99)")
    else:
        keys = [k for k in ("mean", "p50", "p90", "p99", "max") if any(k in stages[n] for n in names)]
        width = 0.8 / max(len(keys), 1)
        x = np.arange(len(names))
        for j, k in enumerate(keys):
            vals = [1000 * float(stages[n].get(k, np.nan)) for n in names]
            bars = ax.bar(x + (j - (len(keys) - 1) / 2) * width, vals, width, label=k)
            for b, v in zip(bars, vals):
                if np.isfinite(v):
                    ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, names)
        ax.set_ylabel("milliseconds per frame")
        if len(keys) > 1:
            ax.legend(fontsize=8)
    vals: list[float] = []
    for n in names:
        st = stages[n]
        vals += (np.asarray(st.get("samples") or [], float) * 1000).tolist()
        vals += [1000 * float(v) for k, v in st.items() if k != "samples" and isinstance(v, (int, float))]
    pos = [v for v in vals if v > 0]
    if pos and max(pos) / min(pos) > 50:
        ax.set_yscale("log")  # sub-ms preprocessing next to tens of ms of inference
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, ax, f"{doc['benchmark']}: latency per stage", doc, path)


def plot_timeline(doc: dict[str, Any], path: Path) -> Path:
    tl = doc["timeline"]
    t = np.asarray(tl["t"], float)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for k, v in tl.items():
        if k.endswith("_s") and k != "t" and len(v) == len(t):
            ax.plot(t / 60 if t.max() > 600 else t, np.asarray(v, float) * 1000,
                    label=k[: -len("_s")].replace("_", " "), lw=1.3)  # fmt: skip
    ax.set_xlabel("minutes" if t.max() > 600 else "seconds")
    ax.set_ylabel("milliseconds")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "fps" in tl and len(tl["fps"]) == len(t):
        ax2 = ax.twinx()
        (line,) = ax2.plot(t / 60 if t.max() > 600 else t, tl["fps"], color="#999", lw=1, ls="--",
                           label="frames/s")  # fmt: skip
        ax2.set_ylabel("frames/s")
        ax2.set_ylim(0, max(tl["fps"]) * 1.2 or 1)
        handles.append(line)
        labels.append("frames/s")
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    return _finish(fig, ax, f"{doc['benchmark']}: latency over time", doc, path)


def render(paths: Sequence[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for p in paths:
        try:
            raw = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{p}: skipped: {exc}", file=sys.stderr)
            continue
        if not isinstance(raw, dict):
            print(f"{p}: skipped: not a JSON object", file=sys.stderr)
            continue
        doc = normalize(raw, p.stem)
        base = out_dir / str(doc["benchmark"]).replace("/", "_")
        if doc.get("throughput"):
            written.append(plot_throughput(doc, base.with_name(base.name + "-throughput.png")))
        if doc.get("stages"):
            written.append(plot_stages(doc, base.with_name(base.name + "-stages.png")))
        if doc.get("timeline"):
            written.append(plot_timeline(doc, base.with_name(base.name + "-timeline.png")))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*", type=Path, help="JSON files (default: bench/results/*.json)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "plots")
    args = ap.parse_args(argv)
    paths = args.results or sorted((ROOT / "bench" / "results").glob("*.json"))
    if not paths:
        print("no results: run a benchmark first (bench/results/*.json)", file=sys.stderr)
        return 1
    for w in render(paths, args.out):
        print(w)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
