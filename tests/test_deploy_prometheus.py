"""The shipped Prometheus files pass promtool, and the Grafana dashboard is well formed.

promtool comes with Debian's ``prometheus`` package (listed in .ci/apt-packages.txt). The alert
rules' behaviour is specified in ``deploy/prometheus/detectd-alerts.test.yml`` (firing and not
firing cases for every alert), run here with ``promtool test rules``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.harness import ROOT
from tests.support.deploy import DASHBOARD, dashboard_queries

PROM = ROOT / "deploy" / "prometheus"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing (Debian package prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=PROM)


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", "detectd-alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    proc = promtool("test", "rules", "detectd-alerts.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "federation.yml"])
def test_promtool_check_config(config: str) -> None:
    proc = promtool("check", "config", config)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test_that_fires() -> None:
    rules = yaml.safe_load((PROM / "detectd-alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alerts >= {"DetectdStreamDown", "DetectdReconnectStorm", "DetectdLatencyHigh",
                      "DetectdFramesDropping", "DetectdNoFrames"}
    tests = yaml.safe_load((PROM / "detectd-alerts.test.yml").read_text())
    fired = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    quiet = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if not t["exp_alerts"]}
    assert fired == alerts and quiet == alerts


def test_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "detectd" and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"datasource", "instance", "stream"}
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= mine
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}"
    exprs = " ".join(e for _, e, _ in dashboard_queries())
    # What the issue asks the dashboard to show.
    assert "rate(detectd_frames_published_total" in exprs
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (stage, le) (rate(detectd_stage_seconds_bucket" in exprs
    for needle in ("sum by (reason) (rate(detectd_frames_dropped_total", "detectd_stream_up",
                   "detectd_stream_reconnects_total", "detectd_batch_size_bucket"):
        assert needle in exprs
    # Counters are only ever shown through rate()/increase() (never raw, never as fps gauges).
    for _, expr, _ in dashboard_queries():
        for m in re.finditer(r"(detectd_\w+_total)\{", expr):
            before = expr[: m.start()]
            assert before.rstrip().endswith(("rate(", "increase(")), expr
