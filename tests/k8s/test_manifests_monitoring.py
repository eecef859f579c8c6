"""The monitoring overlay: ServiceMonitor and KEDA ScaledObject point at real objects, follow the settings,
and Prometheus may scrape the API.
"""

from __future__ import annotations

from pathlib import Path

from kit.k8s_params import PVC, SERVE
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import build
from tests.k8s.netpol import Pod
from tests.k8s.rendered import (
    find,
    kubernetes_validate,
    matches,
    netpol_world,
    render_tree,
)


def test_monitoring_objects_point_at_real_objects() -> None:
    docs = build(REPO / "k8s/overlays/monitoring")
    s = load_settings("default")
    svc = find(docs, "Service", SERVE)
    sm = find(docs, "ServiceMonitor", SERVE)
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": s.serving.api_key_secret, "key": "api-key"}
    so = find(docs, "ScaledObject", SERVE)
    assert find(docs, "Deployment", so["spec"]["scaleTargetRef"]["name"])
    assert "lmdeploy:num_requests_waiting" in so["spec"]["triggers"][0]["metadata"]["query"]
    # metrics stay on: the rendered command carries no --disable-metrics
    assert "--disable-metrics" not in find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]["command"]


def test_prometheus_may_scrape_the_api_in_the_monitoring_overlay() -> None:
    docs = build(REPO / "k8s/overlays/monitoring")
    s = load_settings("default")
    net, pods = netpol_world(docs)
    prometheus = Pod("prometheus", s.monitoring.prometheus_namespace, {"app.kubernetes.io/name": "prometheus"})
    assert net.connects(prometheus, pods[SERVE], s.serving.port)
    assert not net.connects(Pod("other", "default", {}), pods[SERVE], s.serving.port)


def test_monitoring_overlay_follows_the_settings(tmp_path: Path) -> None:
    """ServiceMonitor labels (kube-prometheus-stack selects on `release`), KEDA range, namespace; no replicas field."""
    overrides = {
        "kubernetes": {"namespace": "llm", "access_mode": "ReadWriteMany"},
        "monitoring": {"service_monitor_labels": {"release": "prom"}, "min_replicas": 2, "max_replicas": 6, "prometheus_namespace": "obs"},
    }
    docs = render_tree(tmp_path, overrides)["monitoring"]
    kubernetes_validate(docs, tmp_path / "monitoring.yaml")
    sm = find(docs, "ServiceMonitor", SERVE)
    assert sm["metadata"]["labels"]["release"] == "prom" and sm["metadata"]["namespace"] == "llm"
    so = find(docs, "ScaledObject", SERVE)
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 6)
    assert 'namespace="llm"' in so["spec"]["triggers"][0]["metadata"]["query"]
    assert "replicas" not in find(docs, "Deployment", SERVE)["spec"]
    assert find(docs, "PersistentVolumeClaim", PVC)["spec"]["accessModes"] == ["ReadWriteMany"]
    net, pods = netpol_world(docs)
    assert net.connects(Pod("prometheus", "obs", {}), pods[SERVE], 23333)
    assert not net.connects(Pod("prometheus", "monitoring", {}), pods[SERVE], 23333)
