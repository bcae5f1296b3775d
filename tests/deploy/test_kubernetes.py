"""The Kubernetes manifests (docker/k8s): every overlay renders with kubectl's kustomize,
every object holds against the Kubernetes schemas (strict: no unknown field) and the
custom resources against the schemas KEDA and the Prometheus Operator publish; and what
they say agrees with the service: commands that exist, settings that exist, probes on
the health routes, room for PATCHes to drain, the Celery queue the workers read."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import IN_CI
from tests.e2e.proxies import debian_binary
from tests.support import REPO
from uploader.cli import build_parser
from uploader.settings import Settings

K8S = REPO / "docker" / "k8s"
OVERLAYS = [K8S / "base", *sorted(path for path in (K8S / "overlays").iterdir() if path.is_dir())]
# The oldest release the manifests need (HPA autoscaling/v2, PDB policy/v1 are older) and
# the newest the schemas know.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
Manifest = dict[str, Any]


def render(overlay: Path) -> list[Manifest]:
    done = subprocess.run(
        [debian_binary("kubectl"), "kustomize", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda path: path.name)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(request.param)


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Job"):
            yield manifest["metadata"]["name"], manifest["spec"]["template"]["spec"]


def containers(spec: Manifest) -> list[Manifest]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_objects_hold_against_the_kubernetes_schemas(manifests: list[Manifest]) -> None:
    core = [m for m in manifests if not m["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {m["kind"] for m in core} >= {
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "NetworkPolicy",
    }
    for version in KUBERNETES_VERSIONS:
        for manifest in core:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} on {version}: {exc.message}")


def test_custom_resources_hold_against_their_published_schemas(manifests: list[Manifest]) -> None:
    custom = [m for m in manifests if m["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {m["kind"] for m in custom} == {"ScaledObject", "ServiceMonitor"}
    if shutil.which("node") is None:
        if IN_CI:
            pytest.fail("Node.js is required in CI")
        pytest.skip("Node.js is not installed")
    done = subprocess.run(
        ["node", "validate_crds.mjs"],
        cwd=REPO / "tests" / "js",
        input=json.dumps(custom),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_validation_refuses_what_a_cluster_would() -> None:
    """The checks above can fail: a misspelt field and a ScaledObject with no target."""
    deployment = one(render(K8S / "base"), "Deployment", "uploader-api")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}, "spec": {}}
    done = subprocess.run(
        ["node", "validate_crds.mjs"],
        cwd=REPO / "tests" / "js",
        input=json.dumps([scaled]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "scaleTargetRef" in done.stdout


def test_every_container_runs_a_real_command_with_real_settings(manifests: list[Manifest]) -> None:
    settings = {f"UPLOADER_{name.upper()}" for name in Settings.model_fields}
    for config in (m for m in manifests if m["kind"] == "ConfigMap"):
        unknown = {key for key in config["data"] if key not in settings}
        assert unknown == set(), f"{config['metadata']['name']}: not settings: {unknown}"
    for name, spec in pod_specs(manifests):
        for container in containers(spec):
            build_parser().parse_args(container["args"])  # exits on an unknown command or flag
            for variable in container.get("env", []):
                assert variable["name"] in settings, (name, variable["name"])


def test_every_pod_runs_unprivileged_on_a_read_only_root(manifests: list[Manifest]) -> None:
    image_user = "USER 10001:10001"
    assert image_user in (REPO / "docker" / "Dockerfile").read_text()
    for name, spec in pod_specs(manifests):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in containers(spec):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            # Python and Celery write temporary files: /tmp is a volume of the pod's own.
            assert "/tmp" in {mount["mountPath"] for mount in container["volumeMounts"]}, name
            assert "memory" in container["resources"]["limits"], (name, container["name"])
            assert "cpu" in container["resources"]["requests"], (name, container["name"])


def test_the_api_waits_for_migrations_and_drains_its_patches(manifests: list[Manifest]) -> None:
    config = one(manifests, "ConfigMap", "uploader-config")["data"]
    assert config["UPLOADER_MIGRATE_ON_START"] == "false"
    job = one(manifests, "Job", "uploader-migrate")["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["migrate"]

    api = one(manifests, "Deployment", "uploader-api")
    assert "replicas" not in api["spec"], "the HPA owns the count"
    spec = api["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["args"][:2] == ["migrate", "--wait"]
    (container,) = spec["containers"]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert port_names == {"http": int(config["UPLOADER_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = 30  # uvicorn's graceful shutdown in uploader.serving
    needed = pause + float(config["UPLOADER_SHUTDOWN_DELAY_SECONDS"]) + drain
    assert spec["terminationGracePeriodSeconds"] > needed
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    labels = api["spec"]["template"]["metadata"]["labels"]
    hpa = one(manifests, "HorizontalPodAutoscaler", "uploader-api")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "uploader-api"}
    assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] >= 2, "one pod going leaves another serving"
    pdb = one(manifests, "PodDisruptionBudget", "uploader-api")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    service = one(manifests, "Service", "uploader-api")["spec"]
    assert service["selector"].items() <= labels.items()
    assert "sessionAffinity" not in service, "no stickiness"


def test_the_ingress_streams_bodies_and_events(manifests: list[Manifest]) -> None:
    ingress = one(manifests, "Ingress", "uploader")
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-body-size"] == "0"
    assert annotations[prefix + "proxy-request-buffering"] == "off"
    assert annotations[prefix + "proxy-buffering"] == "off"
    assert int(annotations[prefix + "proxy-read-timeout"]) >= 3600
    assert int(annotations[prefix + "proxy-send-timeout"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "uploader-api", "port": {"name": "http"}}


def test_workers_scale_on_the_queue_they_read_and_beat_is_one(manifests: list[Manifest]) -> None:
    scaled = one(manifests, "ScaledObject", "uploader-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "uploader-worker"
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == Settings().task_queue
    worker = one(manifests, "Deployment", "uploader-worker")
    assert "replicas" not in worker["spec"], "KEDA owns the count"
    args = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    metrics_port = int(args[args.index("--metrics-port") + 1])

    beat = one(manifests, "Deployment", "uploader-beat")["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}

    # Prometheus finds both: each ServiceMonitor selects a Service with the named port.
    services = [m for m in manifests if m["kind"] == "Service"]
    for monitor in (m for m in manifests if m["kind"] == "ServiceMonitor"):
        selected = [
            s
            for s in services
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert selected, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            assert any(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in selected)
    worker_metrics = one(manifests, "Service", "uploader-worker-metrics")["spec"]["ports"][0]
    assert worker_metrics["port"] == metrics_port


def test_the_network_policy_lets_in_only_what_serves(manifests: list[Manifest]) -> None:
    policies = [m for m in manifests if m["kind"] == "NetworkPolicy"]
    (deny,) = [p for p in policies if "ingress" not in p["spec"]]
    assert deny["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "uploader"}
    api_labels = one(manifests, "Deployment", "uploader-api")["spec"]["template"]["metadata"]["labels"]
    (allowed,) = [p for p in policies if p["spec"]["podSelector"].get("matchLabels") == api_labels]
    assert [port["port"] for port in allowed["spec"]["ingress"][0]["ports"]] == [8000]
