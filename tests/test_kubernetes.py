"""deploy/kubernetes/: every manifest validated offline against the Kubernetes OpenAPI schemas
(``kubernetes-validate`` bundles them, strict: unknown fields fail), and the pieces that must agree
with each other and with detectd (shard count = replicas, probes on the metrics port, the
Secret mounted where ``mqtt.password_file`` points, selectors) checked, the embedded config
validated by detectd itself."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import parse_config
from daemon.shard import parse_shard

kv = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
VERSIONS = ("1.30.0", "1.37.0")  # oldest supported upstream and the newest bundled schema
CORE = ("configmap.yaml", "secret.yaml", "service.yaml", "statefulset.yaml", "pdb.yaml")


def load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(docs) == 1
    return docs[0]  # type: ignore[no-any-return]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    return sts["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", CORE)
def test_manifest_is_valid(name: str, version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the validation must work offline")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    kv.validate(load(name), version, strict=True)


def test_the_validator_catches_mistakes() -> None:
    """The check could fail: a misspelt field and a wrong type are refused."""
    sts = load("statefulset.yaml")
    bad = copy.deepcopy(sts)
    bad["spec"]["replica"] = 3
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)
    bad = copy.deepcopy(sts)
    container(bad)["readinessProbe"]["periodSeconds"] = "five"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)


def test_gpu_limit_as_documented_is_valid() -> None:
    text = (K8S / "statefulset.yaml").read_text()
    assert "# nvidia.com/gpu: 1" in text
    sts = yaml.safe_load(text.replace("# nvidia.com/gpu: 1", "nvidia.com/gpu: 1"))
    assert container(sts)["resources"]["limits"]["nvidia.com/gpu"] == 1
    kv.validate(sts, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_core_manifest() -> None:
    assert sorted(load("kustomization.yaml")["resources"]) == sorted(CORE)


def test_pieces_agree(tmp_path: Path) -> None:
    cm, sts, svc, pdb, secret = (load(n) for n in ("configmap.yaml", "statefulset.yaml", "service.yaml",
                                                      "pdb.yaml", "secret.yaml"))
    c = container(sts)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (sts["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"],
                     svc["spec"]["selector"]):
        assert selector.items() <= pod_labels.items()
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    # Not-ready pods keep their DNS names: ZeroMQ subscribers do not lose their endpoints while a
    # pod starts or a required sink is down.
    assert svc["spec"]["publishNotReadyAddresses"] is True

    # The shard: --shard $(POD_INDEX)/N with N == replicas, POD_INDEX the pod ordinal.
    args = c["args"]
    shard_arg = args[args.index("--shard") + 1]
    index_var, count = shard_arg.split("/")
    assert index_var == "$(POD_INDEX)" and int(count) == sts["spec"]["replicas"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    for i in range(sts["spec"]["replicas"]):
        assert parse_shard(f"{i}/{count}").index == i

    # The config: valid for detectd, metrics where the probes and the scrape look, the password
    # where the Secret is mounted, never in the ConfigMap.
    config_path = args[args.index("--config") + 1]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert config_path == os.path.join(mounts["config"]["mountPath"], "config.yaml")
    data = yaml.safe_load(cm["data"]["config.yaml"])
    creds = env["CREDENTIALS_DIRECTORY"]["value"]
    os.environ["CREDENTIALS_DIRECTORY"] = creds
    try:
        cfg = parse_config(data)
    finally:
        os.environ.pop("CREDENTIALS_DIRECTORY")
    assert cfg.mqtt is not None and cfg.mqtt.password_file == "$CREDENTIALS_DIRECTORY/mqtt-password"
    assert mounts["credentials"]["mountPath"] == creds and mounts["credentials"]["readOnly"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["credentials"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert "mqtt-password" in secret["stringData"]
    assert secret["stringData"]["mqtt-password"] not in cm["data"]["config.yaml"]
    port = int(cfg.metrics.listen.rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == port
    assert ports["zeromq"] == int(cfg.publish.endpoint.rpartition(":")[2])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # A broker outage hits every pod at once: it must not make them all NotReady (docs/mqtt.md).
    assert cfg.mqtt.required_for_ready is False
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ann = sts["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    # The drain (shutdown.drain_timeout) and the MQTT goodbye fit in the grace period.
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.shutdown.drain_timeout + 5


def test_servicemonitor_scrapes_the_metrics_port() -> None:
    """A CRD (Prometheus Operator): no schema in the bundle, so only its references are checked."""
    sm = load("optional/servicemonitor.yaml")
    svc = load("service.yaml")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
