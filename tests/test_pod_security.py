"""Every pod the manifests in cluster/ make passes the Pod Security Standard
"restricted" (tests/pod_security.py), mounts no service-account token, and every Ray
node has a memory-backed /dev/shm sized for its object store.

Pod Security Admission judges the Pods KubeRay creates, not the templates: so each
template is checked as KubeRay builds the pod from it. What KubeRay adds (read from
its ray-operator/controllers/ray/common/pod.go): on worker pods a `wait-gcs-ready`
init container with a copy of the Ray container's securityContext, env and mounts;
probes without a host; a /dev/shm emptyDir only when the container mounts nothing
there. The namespace (cluster/namespace.yaml) enforces the same profile.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from pod_security import restricted_violations

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
NAMESPACE = "raysim"


def _documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(CLUSTER.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_templates(node, where: str = "") -> list[tuple[str, dict]]:
    """(path, template) of every pod template below `node`: a mapping whose `spec` has containers."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("spec"), dict) and "containers" in node["spec"]:
            found.append((where, node))
        for key, value in node.items():
            found += pod_templates(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += pod_templates(value, f"{where}[{i}]")
    return found


TEMPLATES = [(f"{name}:{doc['kind']}.{path}", t) for name, doc in _documents() for path, t in pod_templates(doc)]


def _ray_groups() -> list[tuple[str, dict]]:
    """(name, group) of every Ray node group: head and worker groups of the RayCluster and the RayJob."""
    groups = []
    for name, doc in _documents():
        spec = {"RayCluster": lambda d: d["spec"], "RayJob": lambda d: d["spec"]["rayClusterSpec"]}.get(doc["kind"])
        if spec is None:
            continue
        cluster = spec(doc)
        groups.append((f"{name} head", cluster["headGroupSpec"]))
        groups += [(f"{name} {g['groupName']}", g) for g in cluster["workerGroupSpecs"]]
    return groups


def as_kuberay_builds_it(path: str, template: dict) -> dict:
    """The pod spec KubeRay makes from a template: worker pods get its wait-gcs-ready init container."""
    spec = copy.deepcopy(template["spec"])
    if "workerGroupSpecs" in path:
        ray = spec["containers"][0]
        spec.setdefault("initContainers", []).append({
            "name": "wait-gcs-ready", "image": ray["image"], "command": ["/bin/bash", "-lc", "--"],
            "securityContext": copy.deepcopy(ray.get("securityContext")),
            "env": copy.deepcopy(ray.get("env")), "volumeMounts": copy.deepcopy(ray.get("volumeMounts")),
        })
    return spec


def test_the_walk_finds_every_pod_template():
    # RayCluster: head + 2 worker groups; RayJob: the same in rayClusterSpec + the submitter.
    assert len(TEMPLATES) == 7, [p for p, _ in TEMPLATES]


@pytest.mark.parametrize("path,template", TEMPLATES, ids=[p for p, _ in TEMPLATES])
def test_every_pod_passes_pod_security_restricted(path, template):
    violations = restricted_violations(as_kuberay_builds_it(path, template), template.get("metadata"))
    assert not violations, f"{path} breaks Pod Security 'restricted':\n" + "\n".join(violations)


def test_the_namespace_enforces_restricted_and_holds_every_object():
    (ns,) = [d for _, d in _documents() if d["kind"] == "Namespace"]
    assert ns["metadata"]["name"] == NAMESPACE
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
    for name, doc in _documents():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{name} {doc['kind']}: not in namespace {NAMESPACE}"


# ---------------------------------------------------------------- the checker itself


# A pod that passes "restricted", written out here so that the checker's own tests do
# not depend on the manifests they are meant to judge.
RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "ray-head", "image": "raysim:0.1.0-cpu", "ports": [{"containerPort": 6379}],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "results", "persistentVolumeClaim": {"claimName": "r"}},
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                {"name": "token", "secret": {"secretName": "t"}}],
}


def _passing_pod() -> dict:
    spec = copy.deepcopy(RESTRICTED_POD)
    assert restricted_violations(spec) == []
    return spec


def _ray(spec: dict) -> dict:
    return spec["containers"][0]


def _ctx(spec: dict) -> dict:
    return _ray(spec).setdefault("securityContext", {})


# (what is broken, how, the violation it must produce)
MUTATIONS = [
    ("hostNetwork", lambda s: s.update(hostNetwork=True), "spec.hostNetwork"),
    ("hostPID", lambda s: s.update(hostPID=True), "spec.hostPID"),
    ("hostIPC", lambda s: s.update(hostIPC=True), "spec.hostIPC"),
    ("hostProcess", lambda s: _ctx(s).update(windowsOptions={"hostProcess": True}), "windowsOptions.hostProcess"),
    ("privileged", lambda s: _ctx(s).update(privileged=True), "securityContext.privileged"),
    ("a capability beyond baseline", lambda s: _ctx(s)["capabilities"].update(add=["SYS_ADMIN"]), "beyond the baseline set"),
    ("a baseline capability", lambda s: _ctx(s)["capabilities"].update(add=["CHOWN"]), "only NET_BIND_SERVICE allowed"),
    ("capabilities not dropped", lambda s: _ctx(s)["capabilities"].update(drop=["NET_RAW"]), "drop: must include ALL"),
    ("hostPath", lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath: forbidden"),
    ("an nfs volume", lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "type ['nfs']"),
    ("hostPort", lambda s: _ray(s)["ports"][0].update(hostPort=6379), "hostPort: must be 0"),
    ("a probe's host", lambda s: _ray(s).update(readinessProbe={"httpGet": {"host": "10.0.0.1", "port": 1}}),
     "readinessProbe.httpGet.host"),
    ("a preStop hook's host", lambda s: _ray(s).update(lifecycle={"preStop": {"tcpSocket": {"host": "x", "port": 1}}}),
     "lifecycle.preStop.tcpSocket.host"),
    ("AppArmor unconfined", lambda s: _ctx(s).update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile.type"),
    ("SELinux type", lambda s: _ctx(s).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions.type"),
    ("SELinux user", lambda s: _ctx(s).update(seLinuxOptions={"user": "root"}), "seLinuxOptions.user"),
    ("procMount", lambda s: _ctx(s).update(procMount="Unmasked"), "procMount"),
    ("seccomp unconfined", lambda s: _ctx(s).update(seccompProfile={"type": "Unconfined"}), "Unconfined is forbidden"),
    ("no seccomp profile", lambda s: s["securityContext"].pop("seccompProfile"), "no seccompProfile"),
    ("an unsafe sysctl", lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
     "not a safe sysctl"),
    ("privilege escalation unset", lambda s: _ctx(s).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    ("privilege escalation on", lambda s: _ctx(s).update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    ("runAsNonRoot unset", lambda s: s["securityContext"].pop("runAsNonRoot"), "runAsNonRoot: must be true"),
    ("a root container", lambda s: _ctx(s).update(runAsNonRoot=False), "runAsNonRoot: must be true"),
    ("runAsUser 0", lambda s: s["securityContext"].update(runAsUser=0), "runAsUser: must not be 0"),
    ("a container's runAsUser 0", lambda s: _ctx(s).update(runAsUser=0), "runAsUser: must not be 0"),
    ("root group", lambda s: s["securityContext"].update(runAsGroup=0), "runAsGroup: must not be 0"),
    ("a privileged init container", lambda s: s.setdefault("initContainers", []).append(
        {"name": "init", "securityContext": {**copy.deepcopy(_ctx(s)), "privileged": True}}),
     "spec.initContainers[0](init).securityContext.privileged"),
]


@pytest.mark.parametrize("what,mutate,expected", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_the_checker_rejects_each_broken_rule(what, mutate, expected):
    spec = _passing_pod()
    mutate(spec)
    violations = restricted_violations(spec, {})
    assert any(expected in v for v in violations), f"{what}: expected a violation with {expected!r}, got {violations}"


def test_the_checker_allows_what_restricted_allows():
    spec = _passing_pod()
    _ctx(spec)["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    _ctx(spec)["seccompProfile"] = {"type": "Localhost", "localhostProfile": "ray.json"}
    spec["volumes"].append({"name": "cfg", "configMap": {"name": "c"}})
    assert restricted_violations(spec, {"annotations": {"container.apparmor.security.beta.kubernetes.io/ray-head":
                                                        "runtime/default"}}) == []
    # Privilege escalation, seccomp and capabilities are Linux-only controls.
    windows = _passing_pod()
    windows["os"] = {"name": "windows"}
    windows["securityContext"].pop("seccompProfile")
    _ctx(windows).pop("allowPrivilegeEscalation")
    _ctx(windows).pop("capabilities")
    assert restricted_violations(windows) == []


# ---------------------------------------------------------------- service-account tokens


@pytest.mark.parametrize("path,template", TEMPLATES, ids=[p for p, _ in TEMPLATES])
def test_no_pod_mounts_a_service_account_token(path, template):
    spec = template["spec"]
    assert spec.get("automountServiceAccountToken") is False, f"{path}: set automountServiceAccountToken: false"
    for volume in spec.get("volumes") or []:
        sources = (volume.get("projected") or {}).get("sources") or []
        assert not any("serviceAccountToken" in s for s in sources), f"{path}: projects a service-account token"


# ---------------------------------------------------------------- /dev/shm for the object store

QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity_bytes(q) -> int:
    m = QUANTITY.match(str(q))
    assert m, f"not a Kubernetes memory quantity: {q!r}"
    return int(float(m[1]) * UNITS[m[2]])


def test_quantity_bytes():
    assert quantity_bytes("1280Mi") == 1280 * 2**20 and quantity_bytes("8Gi") == 8 * 2**30
    assert quantity_bytes("1073741824") == 2**30 and quantity_bytes("1G") == 10**9


def _shm_volume(group: dict) -> dict:
    spec = group["template"]["spec"]
    (ray,) = spec["containers"]
    (mount,) = [m for m in ray.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return volume


@pytest.mark.parametrize("name,group", _ray_groups(), ids=[n for n, _ in _ray_groups()])
def test_every_ray_node_has_a_memory_backed_dev_shm_that_holds_its_object_store(name, group):
    volume = _shm_volume(group)
    empty_dir = volume.get("emptyDir")
    assert empty_dir and empty_dir.get("medium") == "Memory", f"{name}: /dev/shm must be an emptyDir in memory: {volume}"
    shm = quantity_bytes(empty_dir["sizeLimit"])
    store = int(group["rayStartParams"]["object-store-memory"])
    # Ray puts the object store in /dev/shm only if /dev/shm has that much free
    # (ray/_private/services.py, determine_plasma_store_config); otherwise it falls back to disk.
    assert shm >= store, f"{name}: /dev/shm {shm} B is smaller than object-store-memory {store} B"
    (ray,) = group["template"]["spec"]["containers"]
    memory = quantity_bytes(ray["resources"]["limits"]["memory"])
    # tmpfs pages count against the container's memory limit: /dev/shm takes a slice, not all.
    assert shm <= memory // 4, f"{name}: /dev/shm {shm} B leaves too little of the {memory} B limit"


def _worker_slots(group: dict) -> int:
    """Worker actors a group's pods hold: its raysim_<pool> custom resource (0 on the head)."""
    raw = group["rayStartParams"].get("resources")
    return int(sum(json.loads(raw.strip('"').replace('\\"', '"')).values())) if raw else 0


def test_the_object_store_holds_the_jobs_working_set_twice_over(fashion_mnist_dir):
    """The sizing in cluster/raycluster.yaml, measured: a node's object store holds the
    job's dataset (the driver puts it once; every node keeps a copy for its workers),
    a round's broadcast (weights and masks) and a partial and a merge per worker slot,
    twice over."""
    import pickle

    import torch
    from test_cluster_manifests import _job_config

    from raysim.data.loading import load_federated_dataset
    from raysim.experiment import model_factory

    cfg = _job_config()
    dataset = load_federated_dataset(cfg.data, cfg.seed)
    model = model_factory(cfg, dataset.input_shape, dataset.num_classes, torch.from_numpy(dataset.train.x[:1]))(None)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dataset_bytes = len(pickle.dumps(dataset, protocol=5))
    assert dataset_bytes > 100 * 2**20, f"Fashion-MNIST should be ~210 MiB in the object store, got {dataset_bytes} B"
    for name, group in _ray_groups():
        working_set = dataset_bytes + (2 + 2 * _worker_slots(group)) * model_bytes
        store = int(group["rayStartParams"]["object-store-memory"])
        assert store >= 2 * working_set, f"{name}: object store {store} B < 2 x working set {working_set} B"
