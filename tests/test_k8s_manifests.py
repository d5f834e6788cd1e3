"""The Kubernetes deployment (k8s/) renders, validates offline against the Kubernetes 1.30
schemas, and agrees with the code: setting names, ports, process counts, paths, secrets, metric
names, the image and its entrypoint. No cluster needed; a few seconds.

Rendering uses ``kubectl kustomize`` when kubectl is installed, else ``render_minimal``: a small
renderer of exactly the Kustomize features the overlays use (resources, namespace, labels, images,
replicas, strategic-merge patches of maps and of lists of named items, replacements of a plain
field path into ``[name=...]``-selected list items). It refuses any other feature, and when kubectl
is present a test checks that both renderers agree, so the fallback cannot drift silently.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dataflow import config, metrics
from dataflow.exhaust import settings as exhaust_settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
KUBECTL = shutil.which("kubectl")
STS = "program-user-info"
# Read by k8s/entrypoint.sh and scripts/run-streaming, not by Python.
SHELL_SETTINGS = {"PUI_RECOVERY_PARTS"}
SECRET_SETTINGS = {"PUI_CASSANDRA_USERNAME", "PUI_CASSANDRA_PASSWORD"} | set(
    exhaust_settings.SECRETS
)
KUSTOMIZE_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas"}
KUSTOMIZE_KEYS |= {"patches", "replacements"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


# --- rendering ---------------------------------------------------------------------------------


def _merge(base, patch):
    """Strategic merge as our patches need it: maps merge, lists of maps with a ``name`` merge by
    name (new items appended), any other value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in base + patch):
        out = [copy.deepcopy(i) for i in base]
        for item in patch:
            at = next((n for n, b in enumerate(out) if b["name"] == item["name"]), None)
            if at is None:
                out.append(copy.deepcopy(item))
            else:
                out[at] = _merge(out[at], item)
        return out
    return copy.deepcopy(patch)


def _select(docs: list[dict], kind: str, name: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]


def _walk(node, path: str):
    """Follow a Kustomize field path (``a.b.[name=x].c``); returns (parent, last key)."""
    steps = path.split(".")
    for step in steps[:-1]:
        sel = re.fullmatch(r"\[(\w+)=(.+)\]", step)
        if sel:
            hits = [i for i in node if i.get(sel.group(1)) == sel.group(2)]
            assert len(hits) == 1, f"{path}: {step} matches {len(hits)} items"
            node = hits[0]
        else:
            node = node[step]
    return node, steps[-1]


def render_minimal(folder: Path) -> list[dict]:
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kust) - KUSTOMIZE_KEYS
    assert not unknown, f"{folder}: Kustomize features render_minimal does not handle: {unknown}"
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = folder / res
        if path.is_dir():
            docs += render_minimal(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kust.get("patches", []):
        assert set(patch) == {"path"}, f"only patches from files: {patch}"
        body = yaml.safe_load((folder / patch["path"]).read_text())
        (target,) = _select(docs, body["kind"], body["metadata"]["name"])
        docs[docs.index(target)] = _merge(target, body)
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
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for rep in kust.get("replacements", []):
        src = rep["source"]
        assert set(src) == {"kind", "name", "fieldPath"}, src
        (doc,) = _select(docs, src["kind"], src["name"])
        parent, key = _walk(doc, src["fieldPath"])
        value = parent[key]
        for target in rep["targets"]:
            assert set(target) == {"select", "fieldPaths"}, target
            for d in _select(docs, target["select"]["kind"], target["select"]["name"]):
                for path in target["fieldPaths"]:
                    parent, key = _walk(d, path)
                    old = parent[key]
                    parent[key] = str(value) if isinstance(old, str) else value
    for group in kust.get("labels", []):
        assert set(group) == {"pairs"}, "labels on metadata only"
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
    if "namespace" in kust:
        for d in docs:
            d["metadata"]["namespace"] = kust["namespace"]
    return docs


@functools.cache
def _kustomize(folder: Path) -> str:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def render_kubectl(folder: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(_kustomize(folder)) if d]


def render(folder: Path) -> list[dict]:
    return render_kubectl(folder) if KUBECTL else render_minimal(folder)


def _canonical(node):
    """Order-insensitive form: documents by (kind, name), named list items by name."""
    if isinstance(node, dict):
        return {k: _canonical(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [_canonical(i) for i in node]
        if all(isinstance(i, dict) and "name" in i for i in items):
            return sorted(items, key=lambda i: str(i["name"]))
        return items
    return node


# --- helpers -----------------------------------------------------------------------------------


def pod_spec(doc: dict) -> dict | None:
    template = doc.get("spec", {}).get("template")
    return template["spec"] if template else None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [] if spec is None else spec.get("initContainers", []) + spec.get("containers", [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, (kind, name, len(hits))
    return hits[0]


def streaming(docs: list[dict]) -> tuple[dict, dict]:
    sts = find(docs, "StatefulSet", STS)
    (job,) = sts["spec"]["template"]["spec"]["containers"]
    return sts, job


def dockerfile_stages() -> list[str]:
    text = (K8S / "Dockerfile").read_text()
    return re.split(r"^FROM ", text, flags=re.M)[1:]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> list[dict]:
    return render(K8S / "overlays" / request.param)


# --- rendering and schema ----------------------------------------------------------------------


def test_every_resource_validates_against_kubernetes_1_30(rendered):
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "NetworkPolicy",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "StatefulSet",
    ]
    for doc in rendered:
        kubernetes_validate.validate(doc, "1.30", strict=True)
        assert doc["metadata"]["namespace"]


def test_schema_validation_can_fail():
    sts, _ = streaming(render_minimal(K8S / "overlays" / "prod"))
    sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "9999"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, "1.30", strict=True)


def test_example_secret_validates_and_is_not_deployed():
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, "1.30", strict=True)
    for overlay in OVERLAYS:
        assert all(d["kind"] != "Secret" for d in render_minimal(K8S / "overlays" / overlay))


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_minimal_renderer_agrees_with_kustomize(overlay):
    folder = K8S / "overlays" / overlay
    ours = {(d["kind"], d["metadata"]["name"]): _canonical(d) for d in render_minimal(folder)}
    real = {(d["kind"], d["metadata"]["name"]): _canonical(d) for d in render_kubectl(folder)}
    assert ours.keys() == real.keys()
    for key in real:
        assert ours[key] == real[key], key


@pytest.mark.parametrize("renderer", ["minimal", "kubectl"])
def test_process_count_follows_the_overlay_replicas(tmp_path, renderer):
    if renderer == "kubectl" and KUBECTL is None:
        pytest.skip("kubectl not installed")
    shutil.copytree(K8S, tmp_path / "k8s")
    kust = tmp_path / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    text = kust.read_text()
    assert "count: 2" in text
    kust.write_text(text.replace("count: 2", "count: 4"))
    folder = kust.parent
    docs = render_minimal(folder) if renderer == "minimal" else render_kubectl(folder)
    sts, job = streaming(docs)
    assert sts["spec"]["replicas"] == 4
    assert env_of(job)["BYTEWAX_REPLICAS"]["value"] == "4"


# --- settings and secrets ----------------------------------------------------------------------


def test_configmap_holds_every_non_secret_setting_and_the_code_accepts_it(rendered):
    data = find(rendered, "ConfigMap")["data"]
    settings = set(config.ENV_VARS) | set(exhaust_settings.ENV_VARS)
    assert set(data) == settings - SECRET_SETTINGS
    assert all(isinstance(v, str) for v in data.values())
    streaming_settings = config.load(data)
    assert streaming_settings.metrics_port == config.Settings.metrics_port
    exhaust = exhaust_settings.load({**data, "PUI_ENCRYPTION_SALT": "salt"})
    assert str(exhaust.report_store) == data["PUI_REPORT_STORE"]


def test_env_names_are_settings_the_code_reads(rendered):
    known = set(config.ENV_VARS) | set(exhaust_settings.ENV_VARS) | SHELL_SETTINGS
    for script in (K8S / "entrypoint.sh", ROOT / "scripts" / "run-streaming"):
        for name in SHELL_SETTINGS:
            assert name in script.read_text(), (script, name)
    passthrough = {}
    for doc in rendered:
        for c in containers(doc):
            for name in env_of(c):
                if name.startswith(config.KAFKA_CONFIG_PREFIX):
                    passthrough[name] = "x"
                elif name.startswith("PUI_"):
                    assert name in known, name
    # The Kafka passthrough names become the librdkafka keys we mean.
    extra = config.load(passthrough).kafka_extra
    assert set(extra) == {"sasl.username", "sasl.password"}


def test_secrets_come_only_from_the_secret(rendered):
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    keys = set(example["stringData"])
    secret_like = re.compile(r"PASSWORD|USERNAME|SALT|SECRET|TOKEN")
    assert not [n for n in find(rendered, "ConfigMap")["data"] if secret_like.search(n)]
    required = set()
    for doc in rendered:
        for c in containers(doc):
            for name, env in env_of(c).items():
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if secret_like.search(name):
                    assert ref, f"{c['name']}: {name} must come from the Secret"
                if ref:
                    assert ref["name"] == "program-user-info"
                    assert ref["key"] in keys, ref
                    if not ref.get("optional"):
                        required.add(ref["key"])
    assert required == {"encryption-salt"}
    # The job and the bootstrap reach Kafka and Cassandra with the same credentials.
    _, job = streaming(rendered)
    boot = find(rendered, "Job")["spec"]["template"]["spec"]["containers"][0]

    def refs(c):
        return {n: e["valueFrom"] for n, e in env_of(c).items() if "valueFrom" in e}

    assert {n: v for n, v in refs(job).items() if "secretKeyRef" in v} == refs(boot)


# --- ports, processes, recovery ----------------------------------------------------------------


def test_ports_match_the_metrics_endpoint_and_bytewax(rendered):
    port = int(find(rendered, "ConfigMap")["data"]["PUI_METRICS_PORT"])
    assert port == config.Settings.metrics_port
    sts, job = streaming(rendered)
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in job["ports"]}
    assert ports["metrics"] == port
    probes = {p: (job[p]["httpGet"]["path"], job[p]["httpGet"]["port"]) for p in PROBES}
    assert probes == {
        "startupProbe": ("/healthz", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
        "livenessProbe": ("/healthz", "metrics"),
    }
    # The server answers on every interface of the pod, where the kubelet probes it.
    assert find(rendered, "ConfigMap")["data"]["PUI_METRICS_ADDRESS"] == "0.0.0.0"
    # A stop request finishes within PUI_STOP_TIMEOUT, well before the kubelet's SIGKILL.
    stop = float(find(rendered, "ConfigMap")["data"]["PUI_STOP_TIMEOUT"])
    assert stop + 10 <= sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    svc = find(rendered, "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert svc_ports["bytewax"] == (ports["bytewax"], "bytewax")
    assert svc_ports["metrics"] == (port, "metrics")
    assert int(env_of(job)["BYTEWAX_PORT"]["value"]) == ports["bytewax"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    pdb = find(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_process_count_matches_replicas_and_partitions(rendered):
    sts, job = streaming(rendered)
    replicas = sts["spec"]["replicas"]
    env = env_of(job)
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert int(env["BYTEWAX_REPLICAS"]["value"]) == replicas
    assert env["BYTEWAX_WORKERS_PER_PROCESS"]["value"] == "1"
    # bytewax.run: process id = BYTEWAX_POD_NAME minus "<BYTEWAX_STATEFULSET_NAME>-".
    assert env["BYTEWAX_STATEFULSET_NAME"]["value"] == sts["metadata"]["name"]
    assert env["BYTEWAX_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # One recovery partition per pod, so every partition needs a pod.
    assert 1 <= int(env["PUI_RECOVERY_PARTS"]["value"]) <= replicas
    # Bytewax 0.21 stalls when partitions are spread unevenly over the processes.
    args = find(rendered, "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    partitions = int(args[args.index("--partitions") + 1])
    assert partitions % replicas == 0, (partitions, replicas)


def test_recovery_volume_is_where_the_job_keeps_recovery(rendered):
    sts, job = streaming(rendered)
    env = env_of(job)
    mounts = {m["name"]: m["mountPath"] for m in job["volumeMounts"]}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert mounts[claim["metadata"]["name"]] == env["BYTEWAX_RECOVERY_DIRECTORY"]["value"]
    # bytewax.run refuses -r without both intervals.
    assert int(env["BYTEWAX_SNAPSHOT_INTERVAL"]["value"]) > 0
    assert int(env["BYTEWAX_RECOVERY_BACKUP_INTERVAL"]["value"]) >= 0
    # The entrypoint writes the hostfile on a writable (emptyDir) mount.
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    hostfile = Path(env["BYTEWAX_HOSTFILE_PATH"]["value"])
    (holder,) = [n for n, p in mounts.items() if hostfile.is_relative_to(p)]
    assert "emptyDir" in volumes[holder]


def test_pods_run_locked_down_with_resources(rendered):
    runtime = dockerfile_stages()[-1]
    uid = int(re.search(r"^USER (\d+)", runtime, re.M).group(1))
    for doc in rendered:
        spec = pod_spec(doc)
        if spec is None:
            continue
        ctx = spec["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == uid != 0
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(doc):
            sec = c["securityContext"]
            assert sec["allowPrivilegeEscalation"] is False, c["name"]
            assert sec["readOnlyRootFilesystem"] is True, c["name"]
            assert sec["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], c["name"]


def test_commands_and_images(rendered):
    runtime = dockerfile_stages()[-1]
    cmd = json.loads(re.search(r"^CMD (.+)$", runtime, re.M).group(1))
    _, job = streaming(rendered)
    assert job["args"] == cmd == ["python", "-m", "bytewax.run", "dataflow:flow"]
    assert "command" not in job  # keep the image's entrypoint (hostfile, recovery)
    boot = find(rendered, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert boot["args"][:3] == ["python", "-m", "dataflow.bootstrap"]
    exhaust = find(rendered, "Deployment")
    (ex,) = exhaust["spec"]["template"]["spec"]["containers"]
    assert ex["args"][:4] == ["python", "-m", "dataflow.exhaust", "run"]
    store = find(rendered, "ConfigMap")["data"]["PUI_REPORT_STORE"]
    mounts = {m["mountPath"]: m["name"] for m in ex["volumeMounts"]}
    volumes = {v["name"]: v for v in exhaust["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts[store]]["persistentVolumeClaim"]["claimName"]
    assert find(rendered, "PersistentVolumeClaim", claim)
    images = {c["image"] for d in rendered for c in containers(d)}
    assert len(images) == 1
    assert re.fullmatch(r"registry\.example\.org/program-user-info:\d+\.\d+\.\d+", images.pop())


# --- the image's entrypoint --------------------------------------------------------------------


def _entrypoint(tmp_path: Path, env: dict[str, str], *cmd: str) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent)
    full = {"PATH": f"{venv_bin}:{os.environ['PATH']}", "HOME": str(tmp_path), **env}
    return subprocess.run(
        [str(K8S / "entrypoint.sh"), *cmd], env=full, capture_output=True, text=True, timeout=60
    )


def _pod(tmp_path: Path, ordinal: int, replicas: int, parts: int) -> dict[str, str]:
    """The prod StatefulSet's literal env, as a pod with this ordinal would get it, with the
    paths moved under tmp_path."""
    _, job = streaming(render_minimal(K8S / "overlays" / "prod"))
    env = {n: e["value"] for n, e in env_of(job).items() if "value" in e}
    return {
        **env,
        "BYTEWAX_POD_NAME": f"{env['BYTEWAX_STATEFULSET_NAME']}-{ordinal}",
        "POD_NAMESPACE": "pui",
        "BYTEWAX_REPLICAS": str(replicas),
        "BYTEWAX_HOSTFILE_PATH": str(tmp_path / f"hosts-{ordinal}" / "hostfile.txt"),
        "BYTEWAX_RECOVERY_DIRECTORY": str(tmp_path / f"recovery-{ordinal}"),
        "PUI_RECOVERY_PARTS": str(parts),
    }


def test_entrypoint_gives_bytewax_its_process_id_peers_and_own_recovery_partition(tmp_path):
    probe = (
        "import sys; sys.argv = ['bytewax.run', 'dataflow:flow']; "
        "from bytewax.run import _parse_args; a = _parse_args(); print(a.process_id, a.addresses)"
    )
    out = _entrypoint(tmp_path, _pod(tmp_path, 1, 3, 2), "python", "-c", probe)
    assert out.returncode == 0, out.stderr
    peers = ";".join(f"{STS}-{i}.{STS}.pui.svc:9999" for i in range(3))
    assert out.stdout.split() == ["1", peers]
    assert sorted(p.name for p in (tmp_path / "recovery-1").iterdir()) == ["part-1.sqlite3"]
    # A second start keeps the partition as it is.
    before = (tmp_path / "recovery-1" / "part-1.sqlite3").stat().st_mtime_ns
    assert _entrypoint(tmp_path, _pod(tmp_path, 1, 3, 2), "true").returncode == 0
    assert (tmp_path / "recovery-1" / "part-1.sqlite3").stat().st_mtime_ns == before
    # Pods beyond PUI_RECOVERY_PARTS hold no partition.
    assert _entrypoint(tmp_path, _pod(tmp_path, 2, 3, 2), "true").returncode == 0
    assert list((tmp_path / "recovery-2").iterdir()) == []


def test_entrypoint_refuses_a_pod_beyond_the_process_count(tmp_path):
    out = _entrypoint(tmp_path, _pod(tmp_path, 3, 3, 2), "true")
    assert out.returncode == 64
    assert "BYTEWAX_REPLICAS=3" in out.stderr


def test_entrypoint_outside_kubernetes(tmp_path):
    rec = tmp_path / "rec"
    out = _entrypoint(
        tmp_path, {"BYTEWAX_RECOVERY_DIRECTORY": str(rec), "PUI_RECOVERY_PARTS": "3"}, "true"
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in rec.iterdir()) == [f"part-{i}.sqlite3" for i in range(3)]
    # Without a recovery directory (exhaust, bootstrap) it only runs the command.
    out = _entrypoint(tmp_path, {}, "sh", "-c", "echo ran")
    assert (out.returncode, out.stdout) == (0, "ran\n")


# --- dashboard ---------------------------------------------------------------------------------


def test_grafana_dashboard_queries_metrics_the_job_exports():
    from prometheus_client import REGISTRY

    assert metrics.MESSAGES  # importing dataflow.metrics registers the job's metrics
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exported = set()
    for family in REGISTRY.collect():
        if family.name.startswith("pui_"):
            exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    dash = json.loads((K8S / "grafana" / "program-user-info.json").read_text())
    used = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            used |= set(re.findall(r"\bpui_[a-z_]+", target["expr"]))
    missing = used - exported
    assert not missing, missing
    wanted = {
        "pui_messages_consumed_total",
        "pui_rows_upserted_total",
        "pui_consumer_lag",
        "pui_rejections_total",
        "pui_cassandra_write_seconds_bucket",
        "pui_cassandra_retries_total",
        "pui_failed_published_total",
    }
    assert wanted <= used, wanted - used


# --- the image ---------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_without_compilers():
    stages = dockerfile_stages()
    assert len(stages) == 2
    build, runtime = stages
    assert re.match(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64} AS build\n", build)
    assert re.match(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64} AS runtime\n", runtime)
    assert "maturin build --release --locked" in build
    for tool in ("build-essential", "gcc", "rustup", "cargo", "apt-get install", "maturin"):
        assert tool not in runtime, tool
    assert "--from=build /wheels" in runtime
    assert "--only-binary=:all:" in runtime  # never compiles in the runtime stage
    assert re.search(r"^USER (\d+)", runtime, re.M).group(1) == "10001"
    assert re.search(r"^ENTRYPOINT \[\"pui-entrypoint\"\]$", runtime, re.M)
    assert "k8s/entrypoint.sh /usr/local/bin/pui-entrypoint" in runtime
    assert re.search(r"^STOPSIGNAL SIGINT$", runtime, re.M)
    assert "BYTEWAX_RECOVERY_DIRECTORY" not in runtime  # only the StatefulSet enables recovery
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "target", "var", "**/*.so"):  # a stale local build
        assert path in ignored, path


def _closure(requirements: list[str]) -> set[str]:
    """Names of the distributions the requirements pull in, from the installed metadata."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in ["", *sorted(req.extras)]:
            key = f"{name}[{wanted}]"
            if key in seen:
                continue
            seen.add(key)
            for sub in metadata.requires(req.name) or []:
                todo.append((Requirement(sub), wanted))
    return {k.split("[")[0] for k in seen}


def test_runtime_requirements_are_the_locked_runtime_closure():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = {
        canonicalize_name(n): v
        for n, v in (
            line.split("==")
            for line in (ROOT / "requirements.lock").read_text().splitlines()
            if "==" in line
        )
    }
    runtime = {
        canonicalize_name(n): v
        for n, v in (
            line.split("==")
            for line in (K8S / "requirements-runtime.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")
        )
    }
    assert set(runtime) == _closure(project["dependencies"])
    for name, version in runtime.items():
        assert lock[name] == version, name
    dev = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}
    assert not dev & set(runtime)


def test_base_images_are_pinned_by_digest_with_the_tag_in_a_comment():
    lines = (K8S / "Dockerfile").read_text().splitlines()
    froms = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(froms) == 2
    for i in froms:
        image = lines[i].split()[1]
        name, _, digest = image.partition("@")
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), lines[i]
        # The readable tag sits in the comment just above, so a reviewer sees what is pinned.
        above = []
        while lines[i - 1 - len(above)].startswith("#"):
            above.append(lines[i - 1 - len(above)])
        assert any(name in line for line in above), lines[i]
    assert len({lines[i].split()[1] for i in froms}) == 1  # both stages on the same base


# --- the Bytewax Helm chart / waxctl -----------------------------------------------------------

# What the chart's StatefulSet runs (bytewax/helm-charts, charts/bytewax/templates/
# statefulset.yaml): no workingDir, so in the image's WORKDIR.
CHART_COMMAND = ["sh", "-c", "sh ./entrypoint.sh"]
CHART_RECOVERY_COMMAND = ["sh", "-c", "sh ./entrypoint-recovery.sh"]


def _image_workdir_files(tmp_path: Path) -> Path:
    """The runtime stage's WORKDIR with the files the Dockerfile copies into it, plus the
    image's PATH entries (pui-entrypoint, python)."""
    runtime = dockerfile_stages()[-1]
    workdir = re.search(r"^WORKDIR (\S+)$", runtime, re.M).group(1)
    app = tmp_path / "app"
    bin_dir = tmp_path / "bin"
    app.mkdir()
    bin_dir.mkdir()
    for src, dst in re.findall(r"^COPY --chmod=0755 (\S+) (\S+)$", runtime, re.M):
        target = Path(dst)
        if target.parent == Path(workdir):
            shutil.copy(ROOT / src, app / target.name)
        elif target.parent == Path("/usr/local/bin"):
            (bin_dir / target.name).symlink_to(ROOT / src)
    return app


def _chart_run(tmp_path: Path, command: list[str], env: dict[str, str]):
    venv_bin = str(Path(sys.executable).parent)
    full = {
        "PATH": f"{tmp_path / 'bin'}:{venv_bin}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    return subprocess.run(
        command, cwd=tmp_path / "app", env=full, capture_output=True, text=True, timeout=120
    )


def test_image_runs_under_the_bytewax_chart_command(tmp_path):
    app = _image_workdir_files(tmp_path)
    assert {"entrypoint.sh", "entrypoint-recovery.sh"} <= {p.name for p in app.iterdir()}
    # The chart's init containers: the hostfile, and the python file from its ConfigMap.
    hostfile = tmp_path / "etc" / "hostfile.txt"
    hostfile.parent.mkdir()
    hostfile.write_text("pui-0.pui.pui.svc.cluster.local:9999\n")
    flow_file = tmp_path / "var-bytewax" / "flow.py"
    flow_file.parent.mkdir()
    flow_file.write_text("from dataflow import flow  # noqa: F401\n")
    with socket.socket() as s:  # a broker address nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chart_env = {
        "BYTEWAX_PYTHON_FILE_PATH": str(flow_file),
        "BYTEWAX_WORKDIR": str(flow_file.parent),
        "BYTEWAX_WORKERS_PER_PROCESS": "1",
        "BYTEWAX_POD_NAME": "pui-0",
        "BYTEWAX_REPLICAS": "1",
        "BYTEWAX_KEEP_CONTAINER_ALIVE": "false",
        "BYTEWAX_HOSTFILE_PATH": str(hostfile),
        "BYTEWAX_STATEFULSET_NAME": "pui",
        "PUI_KAFKA_BROKERS": f"127.0.0.1:{port}",
        "PUI_STARTUP_TIMEOUT": "1",
        "PUI_METRICS_PORT": "0",
    }
    out = _chart_run(tmp_path, CHART_COMMAND, chart_env)
    # bytewax.run imported the chart's file, which built our flow: it checked Kafka at start.
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"program-user-info: cannot start: Kafka at 127.0.0.1:{port}: unreachable: "
        f"Connect to ipv4#127.0.0.1:{port} failed: Connection refused "
        "(waited 1 s, PUI_STARTUP_TIMEOUT)"
    )
    assert hostfile.read_text() == "pui-0.pui.pui.svc.cluster.local:9999\n"  # the chart's, kept
    # Without the chart's file it runs the job's flow all the same.
    out = _chart_run(tmp_path, CHART_COMMAND, {**chart_env, "BYTEWAX_PYTHON_FILE_PATH": ""})
    assert out.returncode == 1 and "cannot start: Kafka at" in out.stderr


def test_image_creates_recovery_under_the_bytewax_chart_init_command(tmp_path):
    _image_workdir_files(tmp_path)
    rec = tmp_path / "recovery"
    env = {"BYTEWAX_RECOVERY_DIRECTORY": str(rec), "BYTEWAX_RECOVERY_PARTS": "3"}
    out = _chart_run(tmp_path, CHART_RECOVERY_COMMAND, env)
    assert out.returncode == 0, out.stderr
    parts = sorted(p.name for p in rec.iterdir())
    assert parts == ["part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]
    before = (rec / "part-0.sqlite3").stat().st_mtime_ns
    assert _chart_run(tmp_path, CHART_RECOVERY_COMMAND, env).returncode == 0
    assert (rec / "part-0.sqlite3").stat().st_mtime_ns == before  # kept, not recreated


def test_waxctl_section_uses_waxctl_0_12_flags():
    """Flags of `waxctl dataflow deploy` as printed by Waxctl Pro 0.12.0's --help (Bytewax docs,
    deployment/waxctl.md)."""
    known = {
        "-V", "--chart-values-file", "--create-namespace", "--dry-run", "-e",
        "--environment-variables", "-h", "--help", "-l", "--image-pull-policy", "-s",
        "--image-pull-secret", "-i", "--image-repository", "-t", "--image-tag", "--job-mode",
        "--keep-alive", "-N", "--name", "-n", "--namespace", "-o", "--output-format",
        "--platform", "-p", "--processes", "-f", "--python-file-name", "--recovery",
        "--recovery-backup", "--recovery-backup-interval", "--recovery-parts",
        "--recovery-single-volume", "--recovery-size", "--recovery-snapshot-interval",
        "--recovery-storageclass", "-r", "--requirements-file-name", "-v", "--values", "-w",
        "--workers", "--yes", "--debug",
    }  # fmt: skip
    doc = (ROOT / "docs" / "deploy-kubernetes.md").read_text()
    commands = re.findall(r"^waxctl (?:dataflow|df) deploy .*?(?<!\\)$", doc, re.M | re.S)
    assert commands
    for command in commands:
        flags = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", command))
        assert flags <= known, flags - known
        assert "--image-repository" in flags or "-i" in flags


# --- network policies --------------------------------------------------------------------------


def _matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # all our policies need
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_ok(peer: dict, policy_ns: str, other: dict) -> bool:
    if "ipBlock" in peer:
        if "ip" not in other:
            return False
        import ipaddress

        ip = ipaddress.ip_address(other["ip"])
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ip" in other:
        return False
    if "namespaceSelector" in peer:
        ns_ok = _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other["ns"]})
    else:
        ns_ok = other["ns"] == policy_ns
    return ns_ok and _matches(peer.get("podSelector", {}), other["labels"])


def allowed(docs, pod: dict, direction: str, other: dict, port: int, proto="TCP") -> bool:
    """NetworkPolicy semantics: a pod selected by a policy of this direction accepts only what
    one of those policies' rules allows (peers and ports); an unselected pod accepts all."""
    kind, peers_key = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and d["metadata"]["namespace"] == pod["ns"]
        and _matches(d["spec"]["podSelector"], pod["labels"])
        and kind in d["spec"]["policyTypes"]
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get(peers_key)
            peer_ok = peers is None or any(
                _peer_ok(p, policy["metadata"]["namespace"], other) for p in peers
            )
            ports = rule.get("ports")
            port_ok = ports is None or any(
                p["port"] == port and p.get("protocol", "TCP") == proto for p in ports
            )
            if peer_ok and port_ok:
                return True
    return False


def _pods(docs) -> dict[str, dict]:
    ns = find(docs, "ConfigMap")["metadata"]["namespace"]
    return {
        d["metadata"]["name"]: {"ns": ns, "labels": d["spec"]["template"]["metadata"]["labels"]}
        for d in docs
        if pod_spec(d) is not None
    }


def _server(name: str, namespace: str = "data") -> dict:
    return {"ns": namespace, "labels": {"app.kubernetes.io/name": name}}


def test_every_pod_is_covered_by_ingress_and_egress_policies(rendered):
    for name, pod in _pods(rendered).items():
        stranger = {"ns": "default", "labels": {"app": "anything"}}
        assert not allowed(rendered, pod, "ingress", stranger, 8080), name
        assert not allowed(rendered, pod, "egress", stranger, 8080), name


def test_bytewax_peer_port_only_between_the_job_pods(rendered):
    pods = _pods(rendered)
    job = pods[STS]
    peer = int(find(rendered, "Service")["spec"]["ports"][0]["port"])
    assert peer == 9999
    assert allowed(rendered, job, "ingress", job, peer)
    assert allowed(rendered, job, "egress", job, peer)
    monitoring = {"ns": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}}
    same_ns_other_app = pods["program-user-info-exhaust"]
    for other in (monitoring, same_ns_other_app, {**job, "ns": "elsewhere"}):
        assert not allowed(rendered, job, "ingress", other, peer), other


def test_metrics_only_from_the_monitoring_namespace(rendered):
    job = _pods(rendered)[STS]
    port = int(find(rendered, "ConfigMap")["data"]["PUI_METRICS_PORT"])
    prometheus = {"ns": "monitoring", "labels": {"app.kubernetes.io/name": "prometheus"}}
    assert allowed(rendered, job, "ingress", prometheus, port)
    assert not allowed(rendered, job, "ingress", {**prometheus, "ns": "default"}, port)
    assert not allowed(rendered, job, "ingress", job, port)
    # Bytewax's own API (BYTEWAX_DATAFLOW_API_PORT, default 3030) stays unreachable.
    assert not allowed(rendered, job, "ingress", prometheus, 3030)


def _port_of(url: str, default: int) -> int:
    from urllib.parse import urlsplit

    return urlsplit(url).port or default


def test_egress_reaches_the_configured_servers_and_nothing_else(rendered):
    data = find(rendered, "ConfigMap")["data"]
    kafka_port = int(data["PUI_KAFKA_BROKERS"].split(",")[0].rsplit(":", 1)[1])
    cassandra_port = int(data["PUI_CASSANDRA_PORT"])
    postgres_port = _port_of(data["PUI_POSTGRES_DSN"], 5432)
    redis_port = _port_of(data["PUI_REDIS_URL"], 6379)
    dns = {"ns": "kube-system", "labels": {"k8s-app": "kube-dns"}}
    pods = _pods(rendered)
    needs = {
        STS: {("kafka", kafka_port), ("cassandra", cassandra_port)},
        "program-user-info-bootstrap": {("kafka", kafka_port), ("cassandra", cassandra_port)},
        "program-user-info-exhaust": {
            ("postgres", postgres_port),
            ("redis", redis_port),
            ("cassandra", cassandra_port),
        },
    }
    everything = {
        ("kafka", kafka_port),
        ("cassandra", cassandra_port),
        ("postgres", postgres_port),
        ("redis", redis_port),
    }
    assert set(pods) == set(needs)
    for name, wanted in needs.items():
        pod = pods[name]
        assert allowed(rendered, pod, "egress", dns, 53, "UDP"), name
        assert allowed(rendered, pod, "egress", dns, 53, "TCP"), name
        for server, port in everything:
            ok = allowed(rendered, pod, "egress", _server(server), port)
            assert ok == ((server, port) in wanted), (name, server, port)
            assert not allowed(rendered, pod, "egress", _server(server), port + 1), (name, server)
        # No ingress at all to the bootstrap and the exhaust: they serve nothing.
        if name != STS:
            anyone = {"ns": "monitoring", "labels": {}}
            assert not allowed(rendered, pod, "ingress", anyone, 9100), name
    # Cloud report storage (HTTPS) from the exhaust only, and not into the cluster's networks.
    exhaust, job = pods["program-user-info-exhaust"], pods[STS]
    assert allowed(rendered, exhaust, "egress", {"ip": "52.239.1.1"}, 443)
    assert not allowed(rendered, exhaust, "egress", {"ip": "10.1.2.3"}, 443)
    assert not allowed(rendered, job, "egress", {"ip": "52.239.1.1"}, 443)
