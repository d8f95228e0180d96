"""A real Prometheus (Debian's package) scrapes a real ``detectd run`` on loopback; every query of
the Grafana dashboard, its template variables and the alert rules are evaluated through
Prometheus' HTTP API. A second real Prometheus federates the first with the shipped
``deploy/prometheus/federation.yml`` job, and every dashboard query is evaluated against it too.

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
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import yaml

from tests.harness import OPS_DEFAULTS, ROOT, DaemonProcess, demo_stream, free_port, wait_for
from tests.support.deploy import dashboard_queries
from tests.support.prometheus import PromAPI, start_prometheus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing (Debian package prometheus)"),
]

RATE_INTERVAL = "20s"


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$instance", ".*")
            .replace("$stream", ".*"))


@dataclass
class Stack:
    daemon: DaemonProcess
    site: PromAPI  # scrapes the daemon with the shipped prometheus.yml job and alert rules
    fed: PromAPI  # a "global" Prometheus federating `site` with the shipped federation.yml job


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("prom")
    # cam1 is tracked with a zone and a line (issue 14): the analytics panels have series.
    analytics = {"tracker": {}, "lines": [{"name": "road", "points": [[0.5, 0.35], [0.5, 1.0]], "labels": ["car", "person"]}],
                 "zones": [{"name": "kerb", "points": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]],
                            "labels": ["car", "person"]}]}
    daemon = DaemonProcess(tmp, [demo_stream("cam1", analytics=analytics), demo_stream("cam2"),
                                 {"id": "broken", "url": f"rtsp://127.0.0.1:{free_port()}/live"}],
                           defaults=OPS_DEFAULTS)
    site_port, fed_port = free_port(), free_port()
    shutil.copy(ROOT / "deploy" / "prometheus" / "detectd-alerts.yml", tmp / "detectd-alerts.yml")
    # The shipped scrape job, pointed at this daemon and scraped every second.
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = shipped["scrape_configs"][0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{daemon.metrics_port}"]}]
    job.pop("file_sd_configs", None)
    job["scrape_interval"] = "1s"
    site_cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": ["detectd-alerts.yml"], "scrape_configs": [job]}
    # The shipped federation job, its match[] selectors unchanged, pointed at the site Prometheus.
    fed_job = yaml.safe_load((ROOT / "deploy" / "prometheus" / "federation.yml").read_text())["scrape_configs"][0]
    fed_job["static_configs"] = [{"targets": [f"127.0.0.1:{site_port}"]}]
    fed_job["scrape_interval"] = "1s"
    fed_cfg = {"global": {"scrape_interval": "1s"}, "scrape_configs": [fed_job]}
    procs: list[subprocess.Popen[bytes]] = []
    with daemon:
        try:
            procs.append(start_prometheus(tmp, "site", site_cfg, site_port))
            procs.append(start_prometheus(tmp, "global", fed_cfg, fed_port))
            site, fed = PromAPI(f"http://127.0.0.1:{site_port}"), PromAPI(f"http://127.0.0.1:{fed_port}")

            def ready(api: PromAPI) -> Any:
                def check() -> bool:
                    try:
                        # Through federation too: the daemon's series, with the site's labels.
                        return bool(api.query('detectd_build_info{job="detectd"}'))
                    except OSError:
                        return False
                return check

            assert wait_for(ready(site), 60), (tmp / "site.log").read_text()[-3000:]
            assert wait_for(ready(fed), 60), (tmp / "global.log").read_text()[-3000:]
            # Enough scrapes for a rate over RATE_INTERVAL with frames in it, on both servers (a
            # rate needs two samples, so an alert condition such as DetectdNoFrames means
            # something). Waited for, not slept: each test then waits for what it needs.
            flowing = f"sum(rate(detectd_frames_published_total[{RATE_INTERVAL}])) > 0"
            for api, name in ((site, "site"), (fed, "global")):
                assert wait_for(lambda: bool(api.query(flowing)), 60), (tmp / f"{name}.log").read_text()[-3000:]
            yield Stack(daemon, site, fed)
        finally:
            for prom in procs:
                prom.terminate()
            for prom in procs:
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


def empty_panel_queries(api: PromAPI) -> dict[str, str]:
    """Every dashboard query that returns no series or only NaN, with what was wrong."""
    empty: dict[str, str] = {}
    for title, expr, target in dashboard_queries():
        e = substitute(expr)
        result = api.query(e) if target.get("instant") else api.query_range(e)
        if not result:
            empty[f"{title}: {e}"] = "no series"
        elif not _finite(result):
            empty[f"{title}: {e}"] = "only NaN"
    return empty


def assert_every_panel_has_data(api: PromAPI, daemon: DaemonProcess) -> None:
    assert len(dashboard_queries()) >= 15
    empty: dict[str, str] = {}

    def all_answered() -> bool:
        empty.clear()
        empty.update(empty_panel_queries(api))
        return not empty

    # The slowest series (stage histograms need frames inside the rate window) may take a while.
    wait_for(all_answered, 90, interval=3)
    assert not empty, json.dumps(empty, indent=1) + "\n" + daemon.log()


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    assert_every_panel_has_data(stack.site, stack.daemon)


def test_every_dashboard_query_returns_data_through_federation(stack: Stack) -> None:
    """The global Prometheus of deploy/prometheus/federation.yml answers every panel too."""
    assert_every_panel_has_data(stack.fed, stack.daemon)
    instances = stack.fed.get("/api/v1/label/instance/values", **{"match[]": "detectd_build_info"})
    assert instances == [f"127.0.0.1:{stack.daemon.metrics_port}"]  # the daemon's, not the site's
    assert stack.fed.query('up{job="detectd"} == 1')


@pytest.mark.parametrize("which", ["site", "fed"])
def test_template_variables_resolve(stack: Stack, which: str) -> None:
    api = getattr(stack, which)
    instances = api.get("/api/v1/label/instance/values", **{"match[]": "detectd_build_info"})
    assert instances and all(i.startswith("127.0.0.1:") for i in instances)
    streams = api.get("/api/v1/label/stream/values", **{"match[]": 'detectd_stream_up{instance=~".*"}'})
    assert set(streams) == {"cam1", "cam2", "broken"}


def test_alert_rules_evaluate_against_real_metrics(stack: Stack) -> None:
    api = stack.site
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
