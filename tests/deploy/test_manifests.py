"""The rendered overlays agree with the gateway they run: config, ports, probes, grace, hardening, images."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.config import validate_config
from tests.deploy.manifests import OVERLAYS, ROOT, GatewayPod, gateway_pod, render

LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = "promptwire.v1.Gateway"


@pytest.fixture(params=OVERLAYS)
def pod(request: pytest.FixtureRequest) -> GatewayPod:
    return gateway_pod(request.param)


def test_the_overlays_are_the_documented_ones() -> None:
    assert OVERLAYS == ["gpu", "sidecar", "standalone", "vllm"]


def test_config_validates_with_the_pod_env(pod: GatewayPod) -> None:
    path, _ = pod.config_file()
    config = validate_config(pod.config(), f"{pod.overlay}: {path}")
    assert config.backends


def test_ports_and_probes_match_the_config(pod: GatewayPod) -> None:
    server = pod.config()["server"]
    ports = set(pod.ports.values())
    local_only = server["host"].startswith("127.") or server["host"] == "localhost"
    probe_ports = {server.get("health_port")} if local_only else {server["grpc_port"], server.get("health_port")}
    probe_ports.discard(None)
    if local_only:  # the kubelet dials the pod IP: a localhost API needs the health-only listener
        assert server.get("health_port") is not None
    else:
        assert {server["http_port"], server["grpc_port"]} <= ports
    for kind, service in (("liveness", LIVENESS_SERVICE), ("readiness", READINESS_SERVICE)):
        probe = pod.container[f"{kind}Probe"]
        assert probe["grpc"]["service"] == service, kind
        assert probe["grpc"]["port"] in probe_ports, kind
    startup = pod.container["startupProbe"]
    port = pod.port(startup["httpGet"]["port"])
    assert port in ({server["health_port"]} if local_only else {server["http_port"], server.get("health_port")})
    assert port in ports


def test_startup_probe_allows_model_loading(pod: GatewayPod) -> None:
    p = pod.container["startupProbe"]
    budget = p.get("initialDelaySeconds", 0) + p["failureThreshold"] * p["periodSeconds"]
    has_local_model = any(b.get("type") == "local" for b in pod.config()["backends"].values())
    assert budget >= (1200 if has_local_model else 300)


def test_termination_grace_covers_prestop_and_drain(pod: GatewayPod) -> None:
    grace_s = pod.config()["server"]["shutdown_grace_s"]
    assert pod.termination_grace_s > pod.prestop_s + grace_s


def _all_pods() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for target in [*(f"overlays/{o}" for o in OVERLAYS), "models"]:
        for d in render(target):
            if d["kind"] in ("Deployment", "Job"):
                out.append((target, d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return out


@pytest.mark.parametrize(("target", "name", "spec"), _all_pods(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_pod_is_hardened(target: str, name: str, spec: dict[str, Any]) -> None:
    assert spec["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in [*spec.get("initContainers", ()), *spec["containers"]]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"], c["name"]


def test_prometheus_annotations_point_at_the_metrics_port(pod: GatewayPod) -> None:
    ann = pod.deployment["spec"]["template"]["metadata"].get("annotations") or {}
    server = pod.config()["server"]
    if server["host"].startswith("127."):  # /metrics is on localhost only: nothing to scrape from outside
        assert "prometheus.io/scrape" not in ann
        return
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == server["http_port"]
    assert ann["prometheus.io/path"] == "/metrics"


def test_services_hpa_and_pdb_refer_to_what_exists(pod: GatewayPod) -> None:
    docs = pod.docs
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for svc in (d for d in docs if d["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        targets = [d for d in deployments.values()
                   if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert targets, svc["metadata"]["name"]
        names = {p["name"]: p["containerPort"] for d in targets
                 for c in [*d["spec"]["template"]["spec"].get("initContainers", ()),
                           *d["spec"]["template"]["spec"]["containers"]]
                 for p in c.get("ports", ())}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names or port["targetPort"] in names.values()
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdbs
    for pdb in pdbs:
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(sel.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values())


def test_container_command_is_a_valid_promptwire_command_line(pod: GatewayPod) -> None:
    argv = [*pod.container["command"], *pod.container.get("args", ())]
    assert argv[0] == "promptwire"
    parser, _ = build_parser()
    args = parser.parse_args(argv[1:])
    assert args.command == "serve" and args.config == pod.config_file()[0]


@pytest.mark.parametrize("name", ["proxy", "full", "gpu"])
def test_dockerfile_entrypoint_is_a_valid_promptwire_command_line(name: str) -> None:
    text = (ROOT / "deploy" / "docker" / f"Dockerfile.{name}").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry[0] == "promptwire"
    parser, _ = build_parser()
    args = parser.parse_args([*entry[1:], *cmd])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert "PROMPTWIRE_CACHE_DIR=/cache" in text and 'VOLUME ["/cache"]' in text
    assert re.search(r"^USER 10001", text, re.M)


def test_one_cache_variable() -> None:
    """PROMPTWIRE_CACHE_DIR names the cache in code, docs, images and manifests; no other spelling."""
    other = re.compile(r"PROMPTWIRE_CACHE(?!_DIR)")
    hits = []
    for base in ("gateway", "compressors", "decoders", "deploy", "docs", "README.md", "Makefile"):
        root = ROOT / base
        for p in [root] if root.is_file() else root.rglob("*"):
            if ".venv" in p.parts or not p.is_file() or p.suffix in (".onnx", ".pyc"):
                continue
            text = p.read_text(errors="ignore")
            hits += [f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}" for m in other.finditer(text)]
    assert not hits
    dockerfiles = [p for p in (ROOT / "deploy" / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore"]
    assert len(dockerfiles) == 3 and all("PROMPTWIRE_CACHE_DIR=/cache" in p.read_text() for p in dockerfiles)
