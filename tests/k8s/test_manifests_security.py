"""Rendered overlays are locked down: no secret values, hardened pods, and NetworkPolicies that (evaluated)
let only Gradio and labelled clients reach the API and only fetch reach the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.k8s_params import FETCH, GRADIO, QUANTIZE, SERVE
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import build, profile_of
from tests.k8s.netpol import External
from tests.k8s.rendered import (
    DNS,
    HUB,
    containers,
    docs_profile,
    env,
    find,
    matches,
    netpol_world,
    pod_specs,
    render_tree,
)

# ------------------------------------------------------------------------------------- secrets and pod hardening


def test_no_secret_values_in_the_manifests(docs: list[dict[str, Any]]) -> None:
    assert not [d for d in docs if d["kind"] == "Secret"]
    s = load_settings(profile_of(docs_profile(docs)))
    refs = {
        v["secretKeyRef"]["name"]
        for _, spec, _ in pod_specs(docs)
        for c in containers(spec)
        for v in env(c).values()
        if isinstance(v, dict) and "secretKeyRef" in v
    }
    volumes = {v["secret"]["secretName"] for _, spec, _ in pod_specs(docs) for v in spec.get("volumes", []) if "secret" in v}
    assert refs | volumes == {s.serving.api_key_secret, s.serving.hub_token_secret}


def test_every_pod_is_hardened(docs: list[dict[str, Any]]) -> None:
    for name, spec, _ in pod_specs(docs):
        assert spec["automountServiceAccountToken"] is False, name
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000 and psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}/{c['name']} {kind}"


# ------------------------------------------------------------------------------------- ingress and egress (NetworkPolicies, evaluated)


def test_only_gradio_and_labelled_clients_reach_the_api(docs: list[dict[str, Any]]) -> None:
    s = load_settings(profile_of(docs_profile(docs)))
    policy = find(docs, "NetworkPolicy", SERVE)
    (rule,) = policy["spec"]["ingress"]
    froms = [f["podSelector"]["matchLabels"] for f in rule["from"]]
    gradio_labels = find(docs, "Deployment", GRADIO)["spec"]["template"]["metadata"]["labels"]
    assert any(matches(f, gradio_labels) for f in froms)
    assert {"lmdeploy-kit/client": "true"} in froms and len(froms) == 2
    serve = find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in serve["ports"]}
    assert [named[p["port"]] for p in rule["ports"]] == [s.serving.port]


def test_egress_is_denied_unless_a_policy_allows_it(docs: list[dict[str, Any]]) -> None:
    """serve: DNS only; Gradio and labelled clients: DNS + the API port; fetch: DNS + hub; quantize and others: nothing."""
    s = load_settings(profile_of(docs_profile(docs)))
    net, pods = netpol_world(docs)
    serve, gradio, fetch = pods[SERVE], pods[GRADIO], pods[FETCH]
    api = s.serving.port
    assert net.connects(serve, DNS, 53, "UDP") and not net.connects(serve, HUB, 443)
    assert not net.connects(serve, gradio, s.gradio.port)
    for src in (gradio, pods["client"]):
        assert net.connects(src, DNS, 53, "UDP") and net.connects(src, DNS, 53, "TCP"), src.name
        assert net.connects(src, serve, api), src.name
        assert not net.connects(src, serve, api + 1) and not net.connects(src, HUB, 443), src.name
        assert not net.connects(src, pods["stranger"], 8080), src.name
    assert net.connects(fetch, DNS, 53, "UDP") and net.connects(fetch, HUB, 443)
    assert not net.connects(fetch, HUB, 80) and not net.connects(fetch, serve, api)
    assert not net.connects(pods["stranger"], HUB, 443) and not net.connects(pods["stranger"], serve, api)
    if QUANTIZE in pods:
        quantize = pods[QUANTIZE]
        assert not any(
            net.connects(quantize, dst, port, proto) for dst, port, proto in [(DNS, 53, "UDP"), (HUB, 443, "TCP"), (serve, api, "TCP")]
        )


def test_the_evaluator_sees_the_default_deny() -> None:
    """Guards the test above: without the default-deny policy a stranger pod reaches the hub again."""
    docs = build(REPO / "k8s/overlays/default")
    net, pods = netpol_world([d for d in docs if d["metadata"]["name"] != "lmdeploy-default-deny-egress"])
    assert net.connects(pods["stranger"], HUB, 443) and net.connects(pods[QUANTIZE], HUB, 443)
    net, pods = netpol_world(docs)
    assert not net.connects(pods["stranger"], HUB, 443)


def test_fetch_egress_follows_the_hub_settings(tmp_path: Path) -> None:
    """A proxy/mirror: only its CIDR and port stay open to fetch; the public hub closes."""
    overrides = {"kubernetes": {"hub_egress_cidrs": ["10.20.0.0/16"], "hub_egress_ports": [3128]}}
    for overlay, docs in render_tree(tmp_path, overrides).items():
        net, pods = netpol_world(docs)
        fetch = pods[FETCH]
        assert net.connects(fetch, External("10.20.3.4"), 3128), overlay
        assert not net.connects(fetch, External("10.20.3.4"), 443) and not net.connects(fetch, HUB, 443), overlay
        assert not net.connects(pods[SERVE], External("10.20.3.4"), 3128), overlay
