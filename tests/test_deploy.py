"""The Kubernetes manifest and the cluster member script (deploy/): probes wired to the
health endpoint, names published before readiness, peers logged.

The manifest is read as text (no YAML library is a dependency): the checks look for the
exact lines a working deployment needs.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
MANIFEST = (REPO / "deploy" / "kubernetes.yaml").read_text()


def _env() -> dict[str, str]:
    return dict(re.findall(r"\{name: (\w+), value: \"?([^\"}]*)\"?\}", MANIFEST))


def test_the_manifest_is_indented_yaml_without_tabs():
    assert "\t" not in MANIFEST
    documents = MANIFEST.split("\n---\n")
    assert [re.search(r"^kind: (\w+)$", d, re.M).group(1) for d in documents] == [
        "Service",
        "StatefulSet",
    ]


def test_probes_ask_the_health_endpoint_the_manifest_turns_on():
    settings = Settings.from_env({k: v for k, v in _env().items() if k.isupper()})
    assert settings.health is not None
    host, port = settings.health
    assert host == "0.0.0.0"  # the kubelet probes the pod's IP, not its loopback
    assert f"- {{name: health, containerPort: {port}}}" in MANIFEST
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        block = MANIFEST.split(f"{probe}:\n", 1)[1].split("\n          #", 1)[0]
        assert f"httpGet: {{path: {path}, port: health}}" in block, probe
    assert settings.stall_seconds > 0  # a stalled or cut-off member exits by itself


def test_members_find_each_other_before_they_are_ready():
    """Readiness needs the whole cluster running, and members find each other by the
    headless service's names: without this a restarted cluster waits for itself."""
    service = MANIFEST.split("\n---\n")[0]
    assert "\n  publishNotReadyAddresses: true\n" in service
    assert "podManagementPolicy: Parallel" in MANIFEST


@pytest.mark.slow
def test_the_member_script_says_which_peers_it_uses():
    done = subprocess.run(
        ["sh", str(REPO / "deploy" / "cluster-member.sh"), "-r", "/data"],
        env={
            "HOSTNAME": "orderbook-1",
            "REPLICAS": "3",
            "DRY_RUN": "1",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    peers = "orderbook-0.orderbook:2101;orderbook-1.orderbook:2101;orderbook-2.orderbook:2101"
    assert done.stderr == (
        f"cluster-member: process 1 of 3 (1 workers), peer addresses: {peers}\n"
    )
    assert done.stdout.split() == [
        "python",
        "-m",
        "bytewax.run",
        "dataflow:flow",
        "-i",
        "1",
        "-a",
        peers,
        "-w",
        "1",
        "-r",
        "/data",
    ]
