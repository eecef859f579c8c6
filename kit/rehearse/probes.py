"""Probes (httpGet, tcpSocket, exec) polled with their periods and thresholds, and the preStop hook.

wait_probe polls as the kubelet does: initialDelaySeconds, then one try every periodSeconds; it
passes after successThreshold successes in a row and fails after failureThreshold failures in a
row, or at once when the container exits first.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from kit.rehearse.host import ContainerRun, PodFailed
from kit.rehearse.runtime import Runtime


def _port(probe_port: Any, container: dict[str, Any]) -> int:
    if isinstance(probe_port, int) or str(probe_port).isdigit():
        return int(probe_port)
    for p in container.get("ports") or []:
        if p.get("name") == probe_port:
            return int(p["containerPort"])
    raise PodFailed(f"probe port {probe_port!r} is not a named port of container {container['name']}", container["name"])


def probe_once(rt: Runtime, run: ContainerRun, container: dict[str, Any], probe: dict[str, Any]) -> tuple[bool, str]:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        h = probe["httpGet"]
        url = f"{h.get('scheme', 'HTTP').lower()}://{h.get('host', '127.0.0.1')}:{_port(h['port'], container)}{h.get('path', '/')}"
        req = urllib.request.Request(url, headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return 200 <= resp.status < 400, f"GET {url}: {resp.status}"
        except urllib.error.HTTPError as exc:
            return False, f"GET {url}: {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return False, f"GET {url}: {getattr(exc, 'reason', exc)}"
    if "tcpSocket" in probe:
        port = _port(probe["tcpSocket"]["port"], container)
        try:
            with socket.create_connection((probe["tcpSocket"].get("host", "127.0.0.1"), port), timeout=timeout):
                return True, f"tcp {port}: open"
        except OSError as exc:
            return False, f"tcp {port}: {exc}"
    if "exec" in probe:
        code, out = rt.exec_in(run, probe["exec"]["command"], timeout)
        return code == 0, f"exec exit {code}: {out[-200:]}"
    raise PodFailed(f"probe kind {sorted(probe)} is not supported by the rehearsal", container["name"])


def wait_probe(
    rt: Runtime, run: ContainerRun, container: dict[str, Any], probe: dict[str, Any], kind: str, on_tick: Callable[[], None]
) -> float:
    """Poll one probe as the kubelet does; returns seconds since start when it passed.

    Raises PodFailed when the process exits first or failureThreshold consecutive failures occur.
    """
    period = float(probe.get("periodSeconds", 10))
    threshold = int(probe.get("failureThreshold", 3))
    need = int(probe.get("successThreshold", 1))
    next_at = run.started + float(probe.get("initialDelaySeconds", 0))
    failures = successes = 0
    detail = ""
    while True:
        on_tick()
        if rt.poll(run) is not None:
            raise PodFailed(
                f"container {run.name} exited with code {run.exit_code} after {run.seconds:.1f} s, before its {kind} passed",
                run.name,
                run.tail(),
            )
        now = time.monotonic()
        if now < next_at:
            time.sleep(min(0.25, next_at - now))
            continue
        ok, detail = probe_once(rt, run, container, probe)
        next_at = now + period
        if ok:
            successes += 1
            failures = 0
            if successes >= need:
                return round(time.monotonic() - run.started, 2)
        else:
            successes = 0
            failures += 1
            if failures >= threshold:
                raise PodFailed(
                    f"{kind} of container {run.name} failed {failures} times ({period:.0f} s apart): {detail}", run.name, run.tail()
                )


def run_pre_stop(rt: Runtime, run: ContainerRun, container: dict[str, Any]) -> str:
    hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if not hook or run.proc is None or rt.poll(run) is not None:
        return ""
    if "sleep" in hook:
        time.sleep(float(hook["sleep"]["seconds"]))
        return f"sleep {hook['sleep']['seconds']} s"
    if "exec" in hook:
        code, _ = rt.exec_in(run, hook["exec"]["command"], 60)
        return f"exec exit {code}"
    if "httpGet" in hook:
        ok, detail = probe_once(rt, run, container, {"httpGet": hook["httpGet"], "timeoutSeconds": 10})
        return detail
    return f"unsupported preStop {sorted(hook)}"
