"""Run the gateway as a kubelet would run one pod spec, inside a private network namespace.

Started by tests/deploy/test_pod_start.py as ``unshare --user --map-root-user --net --mount python -m
tests.deploy.podrun SPEC.json``. The pod IP is a loopback address other than 127.0.0.1, so a
listener on 127.0.0.1 is not reachable at it (as in a pod), and in the private namespace ports cannot
clash with anything on the machine. /etc/hosts is replaced (in this mount namespace only) so the config's upstream host names
resolve to fake OpenAI-compatible upstreams started here. Then, in order:

1. start the gateway with the spec's argv, env and working directory;
2. run the startup probe until it passes (within initialDelaySeconds + failureThreshold x periodSeconds),
   then the liveness and readiness probes, all against the pod IP as the kubelet does;
3. the extra HTTP checks (/healthz, /readyz; on a health-only port, that nothing else is served there);
4. drain: a streamed request is held in flight by the upstream, SIGTERM is sent (after the preStop
   pause, which is accounted for, not slept), readiness must fail while liveness still passes, the held
   request is released and must complete, and the process must exit 0 within the grace period.

The report (JSON on stdout) carries each outcome; the test asserts on it.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.upstream import Knobs, UpstreamServer

SERVING = health_pb2.HealthCheckResponse.SERVING


def _setup_namespace(hosts: list[str], workdir: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # 127.0.0.0/8, the pod IP included
    hosts_file = workdir / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in hosts))
    subprocess.run(["mount", "--bind", str(hosts_file), "/etc/hosts"], check=True)


def probe_once(probe: dict[str, Any], pod_ip: str) -> tuple[bool, str]:
    """One kubelet probe attempt (ports already numbers): (passed, detail)."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "grpc" in probe:
            g = probe["grpc"]
            with grpc.insecure_channel(f"{pod_ip}:{g['port']}") as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=g.get("service", "")), timeout=timeout)
            return resp.status == SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        if "httpGet" in probe:
            h = probe["httpGet"]
            status = http_get(h.get("host") or pod_ip, int(h["port"]), h.get("path", "/"), timeout)
            return 200 <= status < 400, f"HTTP {status}"
        if "tcpSocket" in probe:
            with socket.create_connection((pod_ip, int(probe["tcpSocket"]["port"])), timeout=timeout):
                return True, "connected"
    except grpc.RpcError as e:
        return False, f"gRPC {e.code().name}: {e.details()}"
    except OSError as e:
        return False, f"{type(e).__name__}: {e}"
    raise AssertionError(f"unsupported probe {sorted(probe)}")


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "kube-probe/1.37"})
        return conn.getresponse().status
    finally:
        conn.close()


def probe_until(probe: dict[str, Any], pod_ip: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Probe until it passes, at most as long as the kubelet would wait: initialDelaySeconds +
    failureThreshold x periodSeconds (attempts come faster than periodSeconds: only the budget counts)."""
    budget = float(probe.get("initialDelaySeconds", 0)) + int(probe.get("failureThreshold", 3)) * float(
        probe.get("periodSeconds", 10))
    start = time.monotonic()
    attempts, detail = 0, ""
    while time.monotonic() - start < budget and proc.poll() is None:
        attempts += 1
        ok, detail = probe_once(probe, pod_ip)
        if ok:
            return {"passed": True, "after_s": round(time.monotonic() - start, 3), "attempts": attempts,
                    "detail": detail}
        time.sleep(0.05)  # next attempt (kubelet: periodSeconds); not a synchronisation
    return {"passed": False, "after_s": round(time.monotonic() - start, 3), "attempts": attempts,
            "detail": detail, "exited": proc.poll()}


class _Stream(threading.Thread):
    """A streamed chat completion through the gateway, read in two halves: the first event, then the rest."""

    def __init__(self, host: str, port: int, model: str, api_key: str | None) -> None:
        super().__init__(daemon=True)
        self.args = (host, port, model, api_key)
        self.first = threading.Event()
        self.status = 0
        self.body = b""
        self.error: str | None = None

    def run(self) -> None:
        host, port, model, api_key = self.args
        body = json.dumps({"model": model, "stream": True, "max_tokens": 16,
                           "messages": [{"role": "user", "content": "hello there, drain me"}]})
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        try:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            self.status = resp.status
            self.body = resp.readline()
            self.first.set()
            self.body += resp.read()
            conn.close()
        except Exception as e:  # reported, not raised: the test asserts on it
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.first.set()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    workdir = Path(spec["cwd"])
    pod_ip = spec["pod_ip"]
    _setup_namespace(spec["hosts"], workdir)
    gate = threading.Event()
    upstreams = [UpstreamServer(Knobs(models=u["models"], gate=gate), port=u["port"]).start()
                 for u in spec["upstreams"]]
    report: dict[str, Any] = {"probes": {}, "checks": {}}
    log = open(spec["log"], "wb")  # closed below, after the process
    proc = subprocess.Popen(spec["argv"], env=spec["env"], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        probes = spec["probes"]
        report["probes"]["startup"] = probe_until(probes["startup"], pod_ip, proc)
        for name in ("liveness", "readiness"):
            report["probes"][name] = probe_until(probes[name], pod_ip, proc)
        checks = report["checks"]
        hp = spec["health_http_port"]
        checks["healthz"] = http_get(pod_ip, hp, "/healthz")
        checks["readyz"] = http_get(pod_ip, hp, "/readyz")
        api = spec["api"]
        if spec["health_only_port"]:
            checks["health_port_other_paths"] = {p: http_get(pod_ip, hp, p) for p in ("/metrics", "/v1/models")}
            with grpc.insecure_channel(f"{pod_ip}:{hp}") as ch:
                try:
                    ch.unary_unary("/promptwire.v1.Gateway/ListModels")(b"", timeout=5)
                    checks["health_port_gateway_rpc"] = "OK"
                except grpc.RpcError as e:
                    checks["health_port_gateway_rpc"] = e.code().name
        try:  # the API at the pod IP: reachable for a Service, refused for a localhost-only sidecar
            checks["api_on_pod_ip"] = http_get(pod_ip, api["http_port"], "/healthz")
        except OSError as e:
            checks["api_on_pod_ip"] = type(e).__name__
        checks["api_on_client_address"] = http_get(api["host"], api["http_port"], "/healthz")
        report["drain"] = _drain(spec, proc, gate, pod_ip)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        for u in upstreams:
            u.stop()
    report["exit_code"] = proc.returncode
    return report


def _drain(spec: dict[str, Any], proc: subprocess.Popen[bytes], gate: threading.Event, pod_ip: str) -> dict[str, Any]:
    api, req = spec["api"], spec["request"]
    out: dict[str, Any] = {"held_by_upstream": bool(spec["upstreams"])}
    stream = _Stream(api["host"], api["http_port"], req["model"], req.get("api_key"))
    stream.start()
    if not stream.first.wait(30):
        out["error"] = "no first event within 30 s"
        return out
    out["first_status"] = stream.status
    # The kubelet runs preStop (the sleep) and then sends SIGTERM; the pause is counted, not slept.
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    readiness = spec["probes"]["readiness"]
    out["readiness_after_sigterm"] = None
    while time.monotonic() - sent < 10 and proc.poll() is None:
        ok, detail = probe_once(readiness, pod_ip)
        if not ok:
            out["readiness_after_sigterm"] = detail
            break
        time.sleep(0.05)
    out["alive_while_held"] = proc.poll() is None
    out["liveness_while_draining"] = probe_once(spec["probes"]["liveness"], pod_ip)[0] if proc.poll() is None else None
    gate.set()
    stream.join(30)
    out["stream_status"] = stream.status
    out["stream_error"] = stream.error
    out["stream_done"] = stream.body.rstrip().endswith(b"data: [DONE]")
    budget = spec["grace_s"] - spec["prestop_s"]
    try:
        proc.wait(timeout=budget + 5)
    except subprocess.TimeoutExpired:
        out["exited"] = False
        return out
    out["exited"] = True
    out["sigterm_to_exit_s"] = round(time.monotonic() - sent, 3)
    out["budget_s"] = budget
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ.pop("http_proxy", None)
    os.environ.pop("HTTP_PROXY", None)
    print(json.dumps(run(spec)))


if __name__ == "__main__":
    main()
