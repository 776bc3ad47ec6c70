"""deploy/ stays valid: the systemd unit verifies, the Kubernetes YAML has what the DaemonSet needs,
and the example config is exactly `appliance config example` and loads."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import yaml
from click.testing import CliRunner

from appliance import config
from appliance.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _unit() -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in (DEPLOY / "appliance.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def test_systemd_unit_is_hardened_and_verifies(tmp_path: Path) -> None:
    svc = _unit()["Service"]
    assert svc["AmbientCapabilities"] == ["CAP_NET_RAW CAP_NET_ADMIN"]
    assert svc["CapabilityBoundingSet"] == ["CAP_NET_RAW CAP_NET_ADMIN"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "User": "appliance", "KillSignal": "SIGTERM"}.items():
        assert svc[key] == [value], key
    assert "AF_PACKET" in svc["RestrictAddressFamilies"][0]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert " run " in svc["ExecStart"][0] and "--out /var/lib/appliance" in svc["ExecStart"][0]
    assert svc["ReadWritePaths"] == ["/var/lib/appliance"]
    if shutil.which("systemd-analyze"):
        exe = ROOT / ".venv" / "bin" / "appliance"
        unit = tmp_path / "appliance.service"
        unit.write_text((DEPLOY / "appliance.service").read_text().replace("/opt/appliance/bin/appliance", str(exe)))
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "appliance.service" not in r.stderr, r.stderr


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "appliance.service")
    assert parser.get("Install", "WantedBy") == "multi-user.target"


def test_kubernetes_daemonset_and_configmap() -> None:
    ds = yaml.safe_load((DEPLOY / "kubernetes" / "daemonset.yaml").read_text())
    cm = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    assert ds["apiVersion"] == "apps/v1" and ds["kind"] == "DaemonSet"
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]
    (c,) = spec["containers"]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and {"NET_RAW", "NET_ADMIN"} <= set(caps["add"])
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9108}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["env"][0]["name"] == "APPLIANCE_SECRET_FILE"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == ds["metadata"]["namespace"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert mount["subPath"] in cm["data"]
    # the ConfigMap's settings are valid for this version, and the metrics port matches
    cfg_file = yaml.safe_load(cm["data"]["appliance.yaml"])
    assert set(cfg_file) <= {s.key for s in config.SETTINGS}
    assert cfg_file["run.metrics"].endswith(":9108") and cfg_file["run.user"]


def test_configmap_settings_load(tmp_path: Path) -> None:
    cm = yaml.safe_load((DEPLOY / "kubernetes" / "configmap.yaml").read_text())
    path = tmp_path / "appliance.yaml"
    path.write_text(cm["data"]["appliance.yaml"])
    cfg = config.load(str(path))
    assert cfg["capture.interfaces"] == ["eth0"] and cfg["run.user"] == "appliance"


def test_example_config_is_generated_and_loads() -> None:
    r = CliRunner().invoke(cli, ["config", "example"])
    assert r.exit_code == 0
    example = DEPLOY / "appliance.example.yaml"
    assert example.read_text() == r.output, "regenerate: appliance config example > deploy/appliance.example.yaml"
    cfg = config.load(str(example))
    assert cfg.values == {**config.defaults().values, "secret": None}
    for s in config.SETTINGS:  # every setting is documented in the example
        assert f"{s.key}:" in example.read_text(), s.key


def test_container_image_runs_the_daemon() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("FROM python:3.11")
    assert any(line.startswith("ENTRYPOINT") and '"run"' in line for line in lines)
    assert "STOPSIGNAL SIGTERM" in lines and "EXPOSE 9108" in lines
    assert "useradd --system" in text  # the run.user the daemon switches to
