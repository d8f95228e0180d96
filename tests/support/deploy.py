"""The shipped deployment files (deploy/), as several tests read them."""

from __future__ import annotations

import json

from tests.harness import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "detectd-dashboard.json"


def dashboard_queries() -> list[tuple[str, str, dict[str, object]]]:
    """Every query of the Grafana dashboard: (panel title, PromQL expression, target)."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"], target))
    return out
