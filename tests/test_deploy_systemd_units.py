"""The shipped systemd units pass `systemd-analyze verify` and carry the settings operators rely on.

`systemd-analyze verify` refuses a unit whose ExecStart binary does not exist. The units point at
the documented install location `/opt/detectd/bin/detectd`; on a development machine that path is
absent, so the test verifies a temporary copy in which that one path is replaced by this checkout's
`detectd` script (or, before the package is installed, by a small executable stand-in). Nothing
else in the unit is changed. Unknown keys only produce warnings (exit status 0), so any output on
stderr fails the test too.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "systemd"
INSTALLED = "/opt/detectd/bin/detectd"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian package systemd)"
)


def _detectd_binary(tmp_path: Path) -> str:
    if os.access(INSTALLED, os.X_OK):
        return INSTALLED
    candidate = Path(sys.executable).parent / "detectd"
    if os.access(candidate, os.X_OK):
        return str(candidate)
    stub = tmp_path / "bin" / "detectd"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    return str(stub)


def _parse(path: Path) -> configparser.RawConfigParser:
    # systemd allows repeated keys (DeviceAllow=, Environment=); keep every value.
    class MultiDict(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: str, value: object) -> None:
            if key in self and isinstance(value, list):
                super().__getitem__(key).extend(value)
            else:
                super().__setitem__(key, value)

    parser = configparser.RawConfigParser(
        dict_type=MultiDict, strict=False, empty_lines_in_values=False, interpolation=None
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def _parse_text(text: str) -> configparser.RawConfigParser:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "unit.service"
        path.write_text(text)
        return _parse(path)


def _values(unit: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    raw = unit[section].get(key)
    return [] if raw is None else raw.split("\n")


def uncomment_curve(text: str) -> str:
    """The CURVE variant the units document in comments, switched on as an operator would:
    ``#LoadCredential=`` uncommented and, in the proxy unit, the commented ``ExecStart=`` replacing
    the plain one (which is commented out)."""
    lines = text.splitlines()
    has_variant = any(line.startswith("#ExecStart=") for line in lines)
    out = []
    for line in lines:
        if line.startswith("ExecStart=") and has_variant:
            out.append("#" + line)
        elif line.startswith(("#LoadCredential=", "#ExecStart=")):
            out.append(line[1:])
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    ("source", "name", "curve"),
    [
        ("detectd.service", "detectd.service", False),
        ("detectd@.service", "detectd@gpu0.service", False),
        ("detectd-proxy.service", "detectd-proxy.service", False),
        ("detectd.service", "detectd.service", True),
        ("detectd@.service", "detectd@gpu0.service", True),
        ("detectd-proxy.service", "detectd-proxy.service", True),
    ],
)
def test_systemd_analyze_verify(tmp_path: Path, source: str, name: str, curve: bool) -> None:
    binary = _detectd_binary(tmp_path)
    text = (UNITS / source).read_text()
    assert INSTALLED in text
    if curve:
        assert "#LoadCredential=" in text
        text = uncomment_curve(text)
        assert "\nLoadCredential=" in text
    unit = tmp_path / name
    unit.write_text(text.replace(INSTALLED, binary))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    # Warnings (unknown keys, bad values that systemd ignores) only show on stderr.
    problems = [line for line in proc.stderr.splitlines() if line.strip()]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("source", ["detectd.service", "detectd@.service"])
def test_unit_settings(source: str) -> None:
    unit = _parse(UNITS / source)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["WatchdogSec"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["DynamicUser"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["DevicePolicy"] == "closed"
    assert "PrivateDevices" not in service  # it would hide the GPU
    allowed = {v.split()[0] for v in _values(unit, "Service", "DeviceAllow")}
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "char-nvidia-frontend"} <= allowed
    assert service["CacheDirectory"] == "detectd"
    assert service["StateDirectory"].startswith("detectd")
    env = _values(unit, "Service", "Environment")
    assert "DETECTD_CACHE_DIR=%C/detectd" in env
    # A first TensorRT engine build takes minutes: the start timeout must allow for it.
    assert service["TimeoutStartSec"].endswith("min") and int(service["TimeoutStartSec"][:-3]) >= 10
    config = "/etc/detectd/%i.yaml" if "@" in source else "/etc/detectd/config.yaml"
    assert service["ExecStartPre"] == f"{INSTALLED} check-config --config {config}"
    assert service["ExecStart"] == f"{INSTALLED} run --config {config}"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_proxy_unit_runs_the_proxy_command() -> None:
    service = _parse(UNITS / "detectd-proxy.service")["Service"]
    assert service["ExecStart"].startswith(f"{INSTALLED} proxy --frontend ")
    # Loopback unless the operator switches to the CURVE variant: never an open plain endpoint.
    assert "--backend tcp://127.0.0.1:" in service["ExecStart"] and "0.0.0.0" not in service["ExecStart"]
    assert service["DynamicUser"] == "yes" and service["PrivateDevices"] == "yes"  # no GPU needed
    curve = _parse_text(uncomment_curve((UNITS / "detectd-proxy.service").read_text()))["Service"]
    assert curve["LoadCredential"] == "proxy.key_secret:/etc/detectd/curve/proxy.key_secret"
    assert "--backend tcp://0.0.0.0:5570 --server-key %d/proxy.key_secret --authorized-keys " in curve["ExecStart"]


def test_no_unit_sets_an_environment_variable_the_code_does_not_read() -> None:
    sources = "\n".join(p.read_text() for p in (ROOT / "daemon").rglob("*.py"))
    for unit in ("detectd.service", "detectd@.service"):
        for assignment in _values(_parse(UNITS / unit), "Service", "Environment"):
            name = assignment.split("=", 1)[0]
            assert name == "PYTHONUNBUFFERED" or name in sources, f"{unit}: {name} is read by nothing"


@pytest.mark.parametrize("name", ["gpu0", "gpu1"])
def test_template_unit_example_configs_pass_check_config(name: str) -> None:
    """deploy/examples/gpuN.yaml, installed as /etc/detectd/gpuN.yaml, pass the template unit's
    ExecStartPre (the same `detectd check-config`)."""
    from tests.harness import detectd_command

    config = ROOT / "deploy" / "examples" / f"{name}.yaml"
    proc = subprocess.run([*detectd_command(), "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{config}: ok (4 streams)"


def test_template_unit_example_configs_are_disjoint_shards() -> None:
    import yaml

    cfgs = [yaml.safe_load((ROOT / "deploy" / "examples" / f"gpu{i}.yaml").read_text()) for i in (0, 1)]
    ids = [{s["id"] for s in c["streams"]} for c in cfgs]
    assert not ids[0] & ids[1]  # a stream id on exactly one instance
    assert cfgs[0]["publish"]["endpoint"] != cfgs[1]["publish"]["endpoint"]
    assert cfgs[0]["metrics"]["listen"] != cfgs[1]["metrics"]["listen"]
    # The proxy unit's default frontends are these two instances.
    proxy = _parse(UNITS / "detectd-proxy.service")["Service"]["ExecStart"]
    for c in cfgs:
        assert f"--frontend {c['publish']['endpoint']}" in proxy


def _documented_sed_commands() -> dict[str, list[str]]:
    """The `sudo sed -i ...` lines of docs/operations.md (once the README's "Operating detectd"
    section), by the unit file they edit (backslash continuations joined)."""
    section = (ROOT / "docs" / "operations.md").read_text()
    section = section.replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in section.splitlines():
        line = line.strip()
        if line.startswith("sudo sed -i "):
            *cmd, target = line.split()
            out.setdefault(Path(target).name, []).append(" ".join(cmd[1:]))
    return out


@pytest.mark.parametrize("source", ["detectd.service", "detectd-proxy.service"])
def test_documented_sed_switches_the_unit_to_its_curve_variant(tmp_path: Path, source: str) -> None:
    """The documented literal `sed` command, run on a copy of the unit, gives exactly the CURVE
    variant that test_systemd_analyze_verify verifies."""
    commands = _documented_sed_commands()[source]
    assert len(commands) == 1
    unit = tmp_path / source
    shutil.copy(UNITS / source, unit)
    subprocess.run(f"{commands[0]} {unit}", shell=True, check=True, timeout=30)
    assert unit.read_text() == uncomment_curve((UNITS / source).read_text())
