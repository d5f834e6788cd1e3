"""The Kubernetes manifests render, validate against the Kubernetes 1.30 schemas offline, and
agree with the code: variable names, ports, process counts, paths, metric names, image.

No kustomize binary is available here, so ``render`` applies the few Kustomize features the
overlays use (resources, namespace, labels, images, replicas, strategic-merge patches that
merge lists of named items) and fails on anything else, so an overlay cannot silently use a
feature this check does not understand.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dataflow import config, metrics
from dataflow.exhaust import settings as exhaust_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
KNOWN_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas"}
KNOWN_KEYS |= {"patches"}


def _merge(base, patch):
    """Strategic merge for what our patches need: maps merge, lists of named maps merge by
    name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in base + patch)
    ):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            match = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = _merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def render(folder: Path) -> list[dict]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - KNOWN_KEYS
    assert not unknown, f"{folder}: Kustomize features this test does not render: {unknown}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = folder / res
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kust.get("patches", []):
        assert set(patch) == {"path"}, patch
        body = yaml.safe_load((folder / patch["path"]).read_text())
        target = [
            d
            for d in docs
            if d["kind"] == body["kind"] and d["metadata"]["name"] == body["metadata"]["name"]
        ]
        assert len(target) == 1, f"patch {patch['path']} matches {len(target)} resources"
        docs[docs.index(target[0])] = _merge(target[0], body)
    for rep in kust.get("replicas", []):
        hits = [
            d
            for d in docs
            if d["metadata"]["name"] == rep["name"] and "replicas" in d.get("spec", {})
        ]
        assert hits, rep
        for d in hits:
            d["spec"]["replicas"] = rep["count"]
    for image in kust.get("images", []):
        for d in docs:
            for c in containers(d):
                if c["image"].split(":")[0] == image["name"]:
                    name = image.get("newName", image["name"])
                    tag = image.get("newTag", c["image"].partition(":")[2] or "latest")
                    c["image"] = f"{name}:{tag}"
    for group in kust.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
    if "namespace" in kust:
        for d in docs:
            d["metadata"]["namespace"] = kust["namespace"]
    return docs


def pod_spec(doc: dict) -> dict | None:
    spec = doc.get("spec", {})
    if "template" in spec:
        return spec["template"]["spec"]
    return None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    return spec.get("initContainers", []) + spec.get("containers", [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def find(docs, kind, name=None) -> dict:
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, (kind, name, len(hits))
    return hits[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> list[dict]:
    return render(K8S / "overlays" / request.param)


def test_every_resource_validates_against_kubernetes_1_30(rendered):
    for doc in rendered:
        kubernetes_validate.validate(doc, "1.30", strict=True)


def test_env_names_are_settings_the_code_reads(rendered):
    known = set(config.ENV_VARS) | set(exhaust_settings.ENV_VARS)
    # Read by the image's entrypoint (and scripts/run-streaming), not by Python.
    for script in (K8S / "entrypoint.sh", ROOT / "scripts" / "run-streaming"):
        assert "PUI_RECOVERY_PARTS" in script.read_text()
    known.add("PUI_RECOVERY_PARTS")
    cm = find(rendered, "ConfigMap")
    names = set(cm["data"])
    for doc in rendered:
        for c in containers(doc):
            names |= {n for n in env_of(c) if n.startswith("PUI_")}
    for name in names:
        assert name in known or name.startswith(config.KAFKA_CONFIG_PREFIX), name
    # Secrets come from a Secret, never from the ConfigMap.
    assert not any(re.search("PASSWORD|SALT|USERNAME", n) for n in cm["data"])


def test_ports_match_the_metrics_endpoint_and_bytewax(rendered):
    cm = find(rendered, "ConfigMap")
    port = int(cm["data"]["PUI_METRICS_PORT"])
    assert port == config.Settings.metrics_port
    sts = find(rendered, "StatefulSet")
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    (job,) = sts["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in job["ports"]}
    assert ports["metrics"] == port
    assert job["readinessProbe"]["httpGet"]["port"] == "metrics"
    svc = find(rendered, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["bytewax"] == ports["bytewax"]
    hostfile = sts["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert f":{ports['bytewax']}" in hostfile
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]


def test_process_count_matches_replicas(rendered):
    sts = find(rendered, "StatefulSet")
    replicas = sts["spec"]["replicas"]
    for c in containers(sts):
        if "BYTEWAX_REPLICAS" in env_of(c):
            assert int(env_of(c)["BYTEWAX_REPLICAS"]["value"]) == replicas, c["name"]
    (job,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(job)
    assert env["BYTEWAX_STATEFULSET_NAME"]["value"] == sts["metadata"]["name"]
    assert env["BYTEWAX_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Recovery partitions must cover every worker (one per process here).
    assert int(env["PUI_RECOVERY_PARTS"]["value"]) >= replicas


def test_recovery_volume_is_where_the_job_keeps_recovery(rendered):
    sts = find(rendered, "StatefulSet")
    (job,) = sts["spec"]["template"]["spec"]["containers"]
    recovery_dir = env_of(job)["BYTEWAX_RECOVERY_DIRECTORY"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in job["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert mounts[claims[0]] == recovery_dir
    hostfile_path = env_of(job)["BYTEWAX_HOSTFILE_PATH"]["value"]
    assert mounts["hostfile"] == str(Path(hostfile_path).parent)


def test_commands_are_the_documented_ones(rendered):
    sts = find(rendered, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "dataflow:flow"
    boot = find(rendered, "Job")
    assert boot["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
        "python",
        "-m",
        "dataflow.bootstrap",
    ]
    exhaust = find(rendered, "Deployment")
    args = exhaust["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[2:4] == ["dataflow.exhaust", "run"]
    store = find(rendered, "ConfigMap")["data"]["PUI_REPORT_STORE"]
    mounts = exhaust["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert store in [m["mountPath"] for m in mounts]
    for doc in rendered:
        for c in containers(doc):
            assert c["image"].startswith("registry.example.org/program-user-info:"), c["image"]


def test_grafana_dashboard_queries_metrics_the_job_exports():
    from prometheus_client import REGISTRY

    assert metrics.MESSAGES  # the job's metrics are registered by importing dataflow.metrics
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = set()
    for family in REGISTRY.collect():
        if family.name.startswith("pui_"):
            exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    dash = json.loads((K8S / "grafana" / "program-user-info.json").read_text())
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bpui_[a-z_]+", target["expr"]))
    assert used
    missing = used - exported
    assert not missing, missing
    wanted = {"pui_consumer_lag", "pui_rejections_total", "pui_cassandra_retries_total"}
    assert wanted <= used


def test_dockerfile_is_multi_stage_non_root_without_compilers():
    text = (K8S / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2
    runtime = stages[-1]
    assert "build-essential" not in runtime and "rustup" not in runtime
    assert re.search(r"^USER (\d+)", runtime, re.M).group(1) != "0"
    assert 'CMD ["python", "-m", "bytewax.run", "dataflow:flow"]' in runtime
    assert "--from=build" in runtime
    # The runtime requirements pin the same versions as the lock file.
    lock = dict(
        line.split("==")
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    )
    for line in (K8S / "requirements-runtime.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==")
            assert lock[name] == version, name
