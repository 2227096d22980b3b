"""Each overlay's gateway starts exactly as its rendered pod spec says, passes its probes and drains on SIGTERM.

Per overlay: the rendered Deployment's gateway container gives the command, args, env (Secret and
ConfigMap references resolved), ports, probes, preStop and terminationGracePeriodSeconds. Each volume
mount becomes a temporary directory: ConfigMap and Secret volumes hold the rendered files, the models
volume holds the tiny stand-ins of what deploy/k8s/models would put there. Mount paths are the one thing
changed: wherever a mount path appears (command, args, env values, the mounted config) it is replaced
by its directory, as the mount would make it appear. The process then runs in a private network
namespace (tests/deploy/podrun.py) where the pod IP and the upstreams' host names exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.compressors.test_serving_model import tiny_exported
from tests.deploy.manifests import OVERLAYS, ROOT, GatewayPod, gateway_pod, linux_namespaces_work

POD_IP = "127.10.0.7"
"""Stands for the pod IP: a loopback address other than 127.0.0.1, so a listener bound to 127.0.0.1 (a
localhost-only API) is not reachable at it, while one on 0.0.0.0 is; traffic never leaves the namespace."""
EXAMPLE_KEY = "sk-promptwire-example-change-me"
"""The key whose sha256 the example Secret holds (deploy/k8s/base/auth-keys.yaml)."""

pytestmark = pytest.mark.skipif(not linux_namespaces_work(),
                                reason="needs Linux user + network + mount namespaces (unshare)")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What deploy/k8s/models puts on the models volume, as tiny stand-ins: an exported LLMLingua-2
    classifier (the Job's `compressor export`) and a causal LM checkpoint (the gpu overlay's model)."""
    from decoders.tiny import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("stand-ins")
    return {
        "compressor": tiny_exported(tmp_path_factory),  # shared with the compressor tests
        "llm": build_tiny_causal_lm(root / "llm", "llama"),
    }


def _relocate(text: str, mounts: dict[str, Path]) -> str:
    """Mount paths (whole path segments, longest first, one pass) -> their directories."""
    if not mounts:
        return text
    alternatives = "|".join(re.escape(p) for p in sorted(mounts, key=len, reverse=True))
    return re.sub(rf"(?<![\w./-])({alternatives})(?=/|\b|$)", lambda m: str(mounts[m.group(1)]), text)


def _fill_models(config: dict[str, Any], mount: str, target: Path, stand_ins: dict[str, Path]) -> None:
    """Put a stand-in wherever the config expects a model under the models mount."""
    wanted: list[tuple[str, Path]] = []
    compress = (config.get("stages") or {}).get("compress") or {}
    if isinstance(compress.get("model"), str):
        wanted.append((compress["model"], stand_ins["compressor"]))
    for backend in (config.get("backends") or {}).values():
        if backend.get("type") == "local":
            wanted.append((backend["model_path"], stand_ins["llm"]))
    for path, src in wanted:
        assert path.startswith(mount + "/"), f"model {path} is not on the models volume ({mount})"
        shutil.copytree(src, target / path[len(mount) + 1:])


def _spec(pod: GatewayPod, tmp: Path, stand_ins: dict[str, Path]) -> dict[str, Any]:
    c = pod.container
    config = pod.config()
    mounts: dict[str, Path] = {}
    for m in c.get("volumeMounts", ()):
        d = tmp / "volumes" / m["name"]
        d.mkdir(parents=True)
        mounts[m["mountPath"].rstrip("/")] = d
    for m in c.get("volumeMounts", ()):
        d = mounts[m["mountPath"].rstrip("/")]
        files = pod.files(pod.volume(m["name"]))
        if files is not None:
            for name, data in files.items():
                (d / name).write_text(_relocate(data.decode(), mounts))
        elif m["name"] == "models":
            _fill_models(config, m["mountPath"].rstrip("/"), d, stand_ins)

    # The image's PATH puts the venv first; here the venv is this interpreter's.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp / "home"), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):  # a development checkout run through the shared venv
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update({k: _relocate(v, mounts) for k, v in pod.env().items()})

    server = config.get("server") or {}
    health_port = server.get("health_port")
    probes = {}
    for kind in ("startup", "liveness", "readiness"):
        probe = json.loads(json.dumps(c[f"{kind}Probe"]))
        for handler in ("grpc", "httpGet", "tcpSocket"):
            if handler in probe:
                probe[handler]["port"] = pod.port(probe[handler]["port"])
        probes[kind] = probe
    http_probe_port = probes["startup"]["httpGet"]["port"]

    upstreams: dict[int, list[str]] = {}
    hosts: list[str] = []
    for b in (config.get("backends") or {}).values():
        if b.get("type", "openai") == "openai":
            u = urlsplit(b["base_url"])
            hosts.append(u.hostname or "")
            upstreams.setdefault(u.port or 80, []).extend(b.get("models") or ["stub-model"])
    models = [m for ms in upstreams.values() for m in ms] or [
        m for b in (config.get("backends") or {}).values() for m in (b.get("models") or ())]
    keys = (config.get("auth") or {}).get("keys") or []
    if keys:
        assert hashlib.sha256(EXAMPLE_KEY.encode()).hexdigest() in {k["sha256"] for k in keys}
    host = server.get("host", "127.0.0.1")
    return {
        "argv": [_relocate(a, mounts) for a in [*c.get("command", ()), *c.get("args", ())]],
        "env": env,
        "cwd": str(tmp),
        "log": str(tmp / "gateway.log"),
        "pod_ip": POD_IP,
        "hosts": hosts,
        "upstreams": [{"port": p, "models": ms} for p, ms in upstreams.items()],
        "probes": probes,
        "health_http_port": http_probe_port,
        "health_only_port": health_port is not None and http_probe_port == health_port,
        "api": {"host": "127.0.0.1" if host.startswith("127.") else POD_IP, "http_port": server["http_port"]},
        "request": {"model": models[0], "api_key": EXAMPLE_KEY if keys else None},
        "grace_s": pod.termination_grace_s,
        "prestop_s": pod.prestop_s,
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_starts_probes_and_drains(overlay: str, tmp_path: Path, stand_ins: dict[str, Path]) -> None:
    pod = gateway_pod(overlay)
    spec = _spec(pod, tmp_path, stand_ins)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", "--mount", sys.executable, "-m", "tests.deploy.podrun",
         str(spec_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = Path(spec["log"]).read_text(errors="replace")[-4000:] if Path(spec["log"]).exists() else ""
    assert done.returncode == 0, f"runner failed:\n{done.stderr[-4000:]}\ngateway log:\n{log}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    why = f"\nreport: {json.dumps(report, indent=1)}\ngateway log:\n{log}"

    for kind in ("startup", "liveness", "readiness"):
        assert report["probes"][kind]["passed"], f"{kind} probe failed{why}"
    checks = report["checks"]
    assert checks["healthz"] == 200 and checks["readyz"] == 200, why
    assert checks["api_on_client_address"] == 200, why
    if spec["api"]["host"] == "127.0.0.1":  # a localhost-only API: the pod IP must not reach it
        assert checks["api_on_pod_ip"] == "ConnectionRefusedError", why
    else:
        assert checks["api_on_pod_ip"] == 200, why
    if spec["health_only_port"]:  # health and nothing else
        assert checks["health_port_other_paths"] == {"/metrics": 404, "/v1/models": 404}, why
        assert checks["health_port_gateway_rpc"] == "UNIMPLEMENTED", why

    drain = report["drain"]
    assert drain["first_status"] == 200, why
    assert drain["readiness_after_sigterm"] is not None, f"readiness still passing after SIGTERM{why}"
    if drain["held_by_upstream"]:  # the request was certainly in flight when readiness went down
        assert drain["alive_while_held"], f"exited with a request in flight{why}"
        assert drain["liveness_while_draining"], f"liveness failed while draining{why}"
    assert drain["stream_status"] == 200 and drain["stream_done"], f"in-flight request cut{why}"
    assert drain["exited"] and report["exit_code"] == 0, why
    assert spec["prestop_s"] + drain["sigterm_to_exit_s"] < spec["grace_s"], f"drain exceeds the grace period{why}"


def test_pod_runs_the_rendered_config_unchanged_but_for_mount_paths(tmp_path: Path, stand_ins: dict[str, Path]) -> None:
    """The relocation touches mount paths only: map the directories back and the rendered text returns."""
    pod = gateway_pod("standalone")
    _spec(pod, tmp_path, stand_ins)
    path, text = pod.config_file()
    mounts = {m["mountPath"]: tmp_path / "volumes" / m["name"] for m in pod.container["volumeMounts"]}
    config_mount = next(m for m in mounts if path.startswith(m + "/"))
    written = (mounts[config_mount] / path[len(config_mount) + 1:]).read_text()
    assert written != text
    for mount, d in mounts.items():
        written = written.replace(str(d), mount)
    assert written == text
