"""A real Prometheus (Debian's package) scrapes a real ``detectd run`` on loopback; every query of
the Grafana dashboard, its template variables and the alert rules are evaluated through
Prometheus' HTTP API.

The daemon runs the demo video twice (``loop: true``, paced like cameras) plus an RTSP source
that refuses connections, so that streams up and down, reconnects and drops all have series.
Grafana's variables are substituted the way Grafana does with "All" selected: ``$instance`` and
``$stream`` become their ``allValue`` ``.*``; ``$__rate_interval`` becomes 20s (four scrape
intervals and more, as Grafana computes it).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.test_ops_support import ROOT, Daemon, demo_stream, free_port, wait_for
from tests.test_prometheus import dashboard_queries

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing (Debian package prometheus)"),
]

RATE_INTERVAL = "20s"
# Metrics the dashboard shows that the daemon may not export yet (work of another issue in
# progress). A query on one of them that comes back empty because the daemon does not export the
# metric at all is reported as an expected failure naming it, not as a broken dashboard.
PENDING_METRICS = {
    "detectd_stream_seconds_since_frame": "issue 5 (reliability): the daemon does not set it yet",
}


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$instance", ".*")
            .replace("$stream", ".*"))


class PromAPI:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=15) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def query_range(self, expr: str, seconds: int = 30) -> list[dict[str, Any]]:
        end = time.time()
        data = self.get("/api/v1/query_range", query=expr, start=end - seconds, end=end, step="1s")
        return list(data["result"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, PromAPI]]:
    tmp = tmp_path_factory.mktemp("prom")
    daemon = Daemon(tmp, [demo_stream("cam1"), demo_stream("cam2"),
                          {"id": "broken", "url": f"rtsp://127.0.0.1:{free_port()}/live"}])
    port = free_port()
    shutil.copy(ROOT / "deploy" / "prometheus" / "detectd-alerts.yml", tmp / "detectd-alerts.yml")
    # The shipped scrape job, pointed at this daemon and scraped every second.
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = shipped["scrape_configs"][0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{daemon.metrics_port}"]}]
    job.pop("file_sd_configs", None)
    job["scrape_interval"] = "1s"
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
           "rule_files": ["detectd-alerts.yml"], "scrape_configs": [job]}
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    with daemon, open(tmp / "prometheus.log", "wb") as log:
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp,
        )
        try:
            api = PromAPI(f"http://127.0.0.1:{port}")

            def ready() -> bool:
                try:
                    return bool(api.query('up{job="detectd"} == 1'))
                except OSError:
                    return False

            assert wait_for(ready, 60), (tmp / "prometheus.log").read_text()[-3000:]
            # Enough scrapes for a rate over RATE_INTERVAL, and frames for the histograms.
            time.sleep(12)
            yield daemon, api
        finally:
            prom.terminate()
            try:
                prom.wait(20)
            except subprocess.TimeoutExpired:
                prom.kill()


def _finite(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = series.get("values") or [series["value"]]
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


def test_every_dashboard_query_returns_data(stack: tuple[Daemon, PromAPI]) -> None:
    daemon, api = stack
    queries = dashboard_queries()
    assert len(queries) >= 15
    empty: dict[str, str] = {}

    def evaluate() -> None:
        empty.clear()
        for title, expr, target in queries:
            e = substitute(expr)
            result = api.query(e) if target.get("instant") else api.query_range(e)
            if not result:
                empty[f"{title}: {e}"] = "no series"
            elif not _finite(result):
                empty[f"{title}: {e}"] = "only NaN"

    exported = daemon.metric_text()
    missing = [m for m in PENDING_METRICS if f"\n{m}" not in exported]

    def is_pending(key: str) -> bool:
        return any(m in key for m in missing)

    # The slowest series (stage histograms need frames inside the rate window) may take a while.
    wait_for(lambda: evaluate() or all(is_pending(k) for k in empty), 90, interval=3)
    pending = {k: v for k, v in empty.items() if is_pending(k)}
    broken = {k: v for k, v in empty.items() if k not in pending}
    assert not broken, json.dumps(broken, indent=1) + "\n" + daemon.log()
    if pending:
        pytest.xfail("metrics not exported by the daemon yet: " + "; ".join(
            f"{m} ({why})" for m, why in PENDING_METRICS.items() if any(m in k for k in pending)))


def test_template_variables_resolve(stack: tuple[Daemon, PromAPI]) -> None:
    _, api = stack
    instances = api.get("/api/v1/label/instance/values", **{"match[]": "detectd_build_info"})
    assert instances and all(i.startswith("127.0.0.1:") for i in instances)
    streams = api.get("/api/v1/label/stream/values", **{"match[]": 'detectd_stream_up{instance=~".*"}'})
    assert set(streams) == {"cam1", "cam2", "broken"}


def test_alert_rules_evaluate_against_real_metrics(stack: tuple[Daemon, PromAPI]) -> None:
    _, api = stack
    groups = api.get("/api/v1/rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert len(rules) == 7
    assert wait_for(lambda: all(r.get("lastEvaluation", "").startswith("20") for r in
                                (x for g in api.get("/api/v1/rules")["groups"] for x in g["rules"])), 30)
    rules = {r["name"]: r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
    # The stream-down condition (without its 2 minute `for`) holds for the broken source only.
    down = api.query(rules["DetectdStreamDown"]["query"])
    assert {s["metric"]["stream"] for s in down} == {"broken"}
    # Frames flow: the no-frames condition does not hold, the target is up.
    assert api.query(rules["DetectdNoFrames"]["query"]) == []
    assert api.query(rules["DetectdTargetDown"]["query"]) == []
