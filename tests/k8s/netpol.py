"""A small NetworkPolicy evaluator over rendered objects: may pod A open a connection to B on port P?

Implements the networking.k8s.io/v1 rules the kit uses: policies select pods of their own
namespace; a pod selected by no policy of a direction is open in that direction; otherwise a
connection needs one matching rule (peers: podSelector / namespaceSelector / both / ipBlock with
except; ports: number or the destination container's port name, protocol default TCP, endPort).
A connection needs the source's egress and, for a pod destination, the destination's ingress.
ipBlock is matched against external addresses only (whether it matches pod IPs is up to the
network plugin, so the evaluator does not count on it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    # container port name -> (number, protocol)
    ports: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class External:
    ip: str


Endpoint = Pod | External


def _match_labels(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _ns_labels(ns: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": ns}


def _peer_matches(peer: dict[str, Any], other: Endpoint, policy_ns: str) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, External):
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not _match_labels(peer["namespaceSelector"], _ns_labels(other.namespace)):
            return False
    elif other.namespace != policy_ns:
        return False
    return _match_labels(peer.get("podSelector") or {}, other.labels)


def _port_matches(ports: list[dict[str, Any]] | None, dst: Endpoint, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            named = dst.ports.get(want) if isinstance(dst, Pod) else None
            if named == (port, protocol):
                return True
            continue
        if want <= port <= p.get("endPort", want):
            return True
    return False


class Policies:
    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.items = [d for d in docs if d["kind"] == "NetworkPolicy"]

    def _selecting(self, pod: Pod, direction: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.items
            if p["metadata"].get("namespace") == pod.namespace
            and direction in p["spec"].get("policyTypes", ["Ingress"])
            and _match_labels(p["spec"]["podSelector"], pod.labels)
        ]

    def _allowed(self, pod: Pod, other: Endpoint, dst: Endpoint, port: int, protocol: str, direction: str) -> bool:
        selecting = self._selecting(pod, direction)
        if not selecting:
            return True
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(_peer_matches(peer, other, policy["metadata"]["namespace"]) for peer in peers):
                    continue
                if _port_matches(rule.get("ports"), dst, port, protocol):
                    return True
        return False

    def connects(self, src: Pod, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """src's egress allows it and, for a pod, dst's ingress admits it."""
        if not self._allowed(src, dst, dst, port, protocol, "Egress"):
            return False
        return isinstance(dst, External) or self._allowed(dst, src, dst, port, protocol, "Ingress")


def workload_pods(docs: list[dict[str, Any]]) -> dict[str, Pod]:
    """One Pod per Deployment/Job of the rendered docs, with its template labels and named ports."""
    pods = {}
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        tmpl = d["spec"]["template"]
        ports = {
            p["name"]: (p["containerPort"], p.get("protocol", "TCP"))
            for c in tmpl["spec"]["containers"]
            for p in c.get("ports", [])
            if "name" in p
        }
        pods[d["metadata"]["name"]] = Pod(d["metadata"]["name"], d["metadata"]["namespace"], tmpl["metadata"]["labels"], ports)
    return pods
