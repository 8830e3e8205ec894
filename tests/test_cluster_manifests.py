"""The Kubernetes manifests in cluster/, checked offline.

RayCluster and RayJob documents are validated against KubeRay v1.7.0's CRD schemas
(vendored in tests/data, the served version v1) *strictly*: a CRD schema lets unknown
fields through (the API server prunes them silently, so a misspelt `replica` just
vanishes), so every object schema that declares `properties` is closed with
`additionalProperties: false`, as `kubectl apply --validate=strict` would reject them.
CEL rules (x-kubernetes-validations) are not evaluated here.

Beyond the schema: the RayJob's entrypoint names a config that the image really
contains, the GPU group's fractional GPUs pack consistently with the pod's GPUs and
CPUs, token authentication is configured in every Ray container (from a mounted
Secret file), the image's user is the pods' user, no service is exposed outside the
cluster, and the monitoring and network policy fit the ports the pods declare. Pod
Security "restricted", service-account tokens and /dev/shm: tests/test_pod_security.py.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml

from raysim.config import load_config
from raysim.devices import PROFILES

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "Dockerfile"


# The KubeRay v1.7.0 CRDs (the operator's released config/crd files), vendored gzipped so
# the test runs on any clean clone.
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds-v1.7.0"


def _crd_text(filename: str) -> str:
    return gzip.decompress((CRDS / f"{filename}.gz").read_bytes()).decode()


CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
RAY_KINDS = set(CRD_FILES)
SECRET_KEY = "auth_token"  # the key KubeRay reads from authOptions.secretName
# ObjectMeta fields a manifest may set (metadata is `type: object` with no properties
# in the CRD, so the schema cannot close it).
OBJECT_META = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


# ---------------------------------------------------------------- loading


def _documents() -> list[tuple[str, int, dict]]:
    docs = []
    for path in sorted(CLUSTER.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path.name} document {i}: not a mapping"
            docs.append((path.name, i, doc))
    return docs


DOCS = _documents()


def _only(kind: str) -> dict:
    found = [d for _, _, d in DOCS if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in cluster/*.yaml, found {len(found)}"
    return found[0]


def _cluster_specs() -> dict[str, dict]:
    """The RayCluster spec of each manifest: the RayCluster's and the RayJob's rayClusterSpec."""
    return {"RayCluster": _only("RayCluster")["spec"], "RayJob": _only("RayJob")["spec"]["rayClusterSpec"]}


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def _is_gpu(group: dict) -> bool:
    return any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in group["template"]["spec"]["containers"])


def _gpu_group(spec: dict) -> dict:
    (gpu,) = [g for g in spec["workerGroupSpecs"] if _is_gpu(g)]
    return gpu


def _ray_containers():
    """Every container that runs Ray or a Ray client: heads, workers, the submitter."""
    for owner, spec in _cluster_specs().items():
        for name, group in _groups(spec):
            for c in group["template"]["spec"]["containers"]:
                yield f"{owner} {name} {c['name']}", c
    submitter = _only("RayJob")["spec"].get("submitterPodTemplate")
    if submitter:
        for c in submitter["spec"]["containers"]:
            yield f"RayJob submitter {c['name']}", c


def _cpu_quantity(q) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


# ---------------------------------------------------------------- strict CRD schemas


def strict(schema: dict) -> dict:
    """The schema with every object that declares `properties` closed to other fields,
    unless it says otherwise (its own additionalProperties, or
    x-kubernetes-preserve-unknown-fields). Recurses through properties, items,
    additionalProperties and the combinators."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = strict(out["not"])
    return out


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict]:
    schemas = {}
    for kind, filename in CRD_FILES.items():
        crd = yaml.load(_crd_text(filename), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["spec"]["names"]["kind"] == kind, f"{filename} defines {crd['spec']['names']['kind']}, not {kind}"
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        assert v1["served"], f"{filename}: v1 is not served"
        schemas[kind] = v1["schema"]["openAPIV3Schema"]
    return schemas


def _errors(schema: dict, doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    messages = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(document)"
        messages.append(f"{where}: {err.message}")
    extra = set(doc.get("metadata", {})) - OBJECT_META
    if extra:
        messages.append(f"metadata: unknown field(s) {sorted(extra)}; allowed: {sorted(OBJECT_META)}")
    return messages


@pytest.mark.parametrize("kind", sorted(RAY_KINDS))
def test_ray_manifests_validate_strictly_against_kuberay_crds(kind, crd_schemas):
    docs = [(f, i, d) for f, i, d in DOCS if d.get("kind") == kind]
    assert docs, f"no {kind} in cluster/*.yaml"
    for filename, i, doc in docs:
        assert doc.get("apiVersion") == "ray.io/v1", f"{filename}[{i}]: apiVersion {doc.get('apiVersion')!r}, want ray.io/v1"
        errors = _errors(strict(crd_schemas[kind]), doc)
        assert not errors, f"{filename}[{i}] ({kind}) fails strict validation:\n" + "\n".join(errors)


def test_strict_validation_rejects_misspelt_fields(crd_schemas):
    """The check above must not go soft: misspelt fields at three depths are rejected,
    though the CRD's own (pruning) schema lets every one of them through."""
    job = copy.deepcopy(_only("RayJob"))
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    worker["rayStartParam"] = worker.pop("rayStartParams")
    worker["replica"] = worker.pop("replicas")
    worker["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    job["spec"]["entrypointt"] = "oops"

    errors = _errors(strict(crd_schemas["RayJob"]), job)
    expected = {
        "rayStartParam": "spec.rayClusterSpec.workerGroupSpecs.0:",
        "replica": "spec.rayClusterSpec.workerGroupSpecs.0:",
        "imagePullPolicyy": "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0:",
        "entrypointt": "spec:",
    }
    for field, where in expected.items():
        assert any(e.startswith(where) and f"'{field}'" in e and "unexpected" in e for e in errors), (
            f"strict validation missed {field!r} at {where}\n" + "\n".join(errors)
        )

    assert not _errors(crd_schemas["RayJob"], job), "the unmodified CRD schema was expected to accept unknown fields"

    cluster = copy.deepcopy(_only("RayCluster"))
    cluster["spec"]["headGroupSpec"]["servicetype"] = "ClusterIP"
    cluster["metadata"]["label"] = {"a": "b"}
    errors = _errors(strict(crd_schemas["RayCluster"]), cluster)
    assert any(e.startswith("spec.headGroupSpec:") and "'servicetype'" in e for e in errors), errors
    assert "metadata: unknown field(s) ['label']; allowed: " in "\n".join(errors)


def test_every_manifest_is_a_named_kubernetes_object():
    assert {d["kind"] for _, _, d in DOCS} >= {"RayCluster", "RayJob", "NetworkPolicy", "PodMonitor"}
    for filename, i, doc in DOCS:
        where = f"{filename}[{i}]"
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], f"{where}: no apiVersion"
        assert isinstance(doc.get("kind"), str) and doc["kind"], f"{where}: no kind"
        assert isinstance(doc.get("metadata", {}).get("name"), str) and doc["metadata"]["name"], f"{where}: no metadata.name"
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{where}: a token must not be committed"


# ---------------------------------------------------------------- cluster shape


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob"])
def test_head_and_two_worker_groups_cpu_and_fractional_gpu(owner):
    spec = _cluster_specs()[owner]
    workers = spec["workerGroupSpecs"]
    assert len(workers) == 2, f"{owner}: want a CPU and a GPU worker group, got {[g['groupName'] for g in workers]}"
    assert sorted(_is_gpu(g) for g in workers) == [False, True], f"{owner}: want exactly one GPU group"
    gpu = _gpu_group(spec)
    for c in gpu["template"]["spec"]["containers"]:
        limits = c["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == 1, f"{owner}: the GPU pod should request one whole GPU to share"
    assert not _is_gpu(spec["headGroupSpec"])


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob"])
def test_worker_groups_map_onto_the_device_profiles(owner):
    """Each worker group stands for a tier of raysim/devices.py's profiles: together they
    cover the catalogue exactly once, each carries a Ray node label and a custom Ray
    resource (valid JSON through KubeRay's quoting) for its pool."""
    seen: list[str] = []
    for group in _cluster_specs()[owner]["workerGroupSpecs"]:
        name = group["groupName"]
        profiles = group["template"]["metadata"]["annotations"]["raysim.io/device-profiles"].split(",")
        unknown = set(profiles) - set(PROFILES.names())
        assert not unknown, f"{owner} {name}: unknown device profiles {sorted(unknown)}; known: {sorted(PROFILES.names())}"
        seen += profiles
        pool = group["labels"]["raysim.io/device-pool"]
        raw = group["rayStartParams"]["resources"]
        assert raw.startswith('"') and raw.endswith('"'), f"{owner} {name}: KubeRay needs the resources JSON quoted, got {raw!r}"
        resources = json.loads(raw[1:-1].replace('\\"', '"'))
        expected_key = "raysim_" + pool.replace("-", "_")
        assert set(resources) == {expected_key}, f"{owner} {name}: custom resources {resources}, want {expected_key}"
        assert isinstance(resources[expected_key], (int, float)) and resources[expected_key] > 0
    assert sorted(seen) == sorted(PROFILES.names()), f"{owner}: groups must cover every profile exactly once, got {seen}"
    gpu = _gpu_group(_cluster_specs()[owner])
    assert gpu["template"]["metadata"]["annotations"]["raysim.io/device-profiles"] == "datacenter_gpu"


def test_ray_version_matches_the_pinned_ray():
    pins = dict(
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    )
    for owner, spec in _cluster_specs().items():
        assert spec["rayVersion"] == pins["ray"], f"{owner}: rayVersion {spec['rayVersion']} but constraints.txt pins ray=={pins['ray']}"


# ---------------------------------------------------------------- image layout and the RayJob entrypoint


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    logical, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        instr, _, rest = buf.strip().partition(" ")
        logical.append((instr.upper(), rest.strip()))
        buf = ""
    return logical


def _ignore_regex(pattern: str) -> re.Pattern:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def build_context_excludes(rel: PurePosixPath) -> bool:
    """Whether cluster/Dockerfile.dockerignore (which BuildKit reads for this Dockerfile)
    keeps `rel` (relative to the context, the repository root) out of the build
    context: the last matching pattern wins, and a pattern matching a folder matches
    everything in it."""
    ignore = CLUSTER / "Dockerfile.dockerignore"
    if not ignore.is_file():
        return False
    excluded = False
    candidates = [str(rel)] + [str(p) for p in rel.parents if str(p) != "."]
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _ignore_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def image_path_to_repo(path: str) -> Path | None:
    """Which repository file the image has at `path`, from the Dockerfile's WORKDIR and
    COPY lines and the build context's ignore file (the context is the repository
    root); None if nothing puts it there."""
    target = PurePosixPath(path)
    workdir = PurePosixPath("/")
    found = None
    for instr, rest in _dockerfile_instructions():
        if instr == "WORKDIR":
            workdir = workdir / rest
        elif instr == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            *sources, dest = args
            dest_path = workdir / dest
            into_dir = dest.endswith("/") or len(sources) > 1
            for src in sources:
                src_path = REPO / src.rstrip("/")
                base = dest_path / PurePosixPath(src).name if into_dir and src_path.is_file() else dest_path
                if src_path.is_dir():
                    # COPY copies a directory's contents into dest.
                    if target == base or base in target.parents:
                        found = src_path / target.relative_to(base)
                elif target == base:
                    found = src_path
    if found is not None and build_context_excludes(PurePosixPath(found.relative_to(REPO).as_posix())):
        return None
    return found


def _entrypoint() -> list[str]:
    return shlex.split(_only("RayJob")["spec"]["entrypoint"])


def _entrypoint_args():
    from raysim.cli import _parser

    argv = _entrypoint()
    assert argv[:2] == ["raysim", "run"], f"the RayJob should run `raysim run CONFIG`, got {argv}"
    return _parser().parse_args(argv[1:])


def _job_config():
    args = _entrypoint_args()
    repo_file = image_path_to_repo(str(args.config))
    assert repo_file is not None and repo_file.is_file(), f"{args.config} is not in the image: no COPY puts it there"
    return load_config(repo_file, args.overrides)


def test_dockerfile_base_install_and_layout():
    instrs = _dockerfile_instructions()
    args = {rest.partition("=")[0]: rest.partition("=")[2] for instr, rest in instrs if instr == "ARG"}
    (base,) = [rest for instr, rest in instrs if instr == "FROM"]
    base = args.get(base.strip("${}"), base) if base.startswith("$") else base
    assert base.startswith("python:3.11-slim"), f"base image {base}"
    assert ("WORKDIR", "/app") in instrs
    runs = " ".join(rest for instr, rest in instrs if instr == "RUN")
    assert "-c constraints.txt ." in runs, "the image must install the package with the torch/ray pins"
    assert "https://download.pytorch.org/whl/cpu" in runs, "the CPU image needs the PyTorch CPU index for torch==2.13.0"
    assert "dataset-fashion-mnist" in runs and "wget" in runs
    for src in ("pyproject.toml", "raysim/config.py", "autoflip", "raysim/configs/default.yaml"):
        image_path = "/app/" + src
        assert image_path_to_repo(image_path) == REPO / src, f"{image_path} should come from {src}"
    assert image_path_to_repo("/app/cluster/configs/nope.yaml") == REPO / "cluster/configs/nope.yaml"
    assert image_path_to_repo("/app/tests/conftest.py") is None
    # The build context's ignore file keeps caches and everything uncopied out.
    assert image_path_to_repo("/app/raysim/__pycache__/config.cpython-311.pyc") is None
    assert build_context_excludes(PurePosixPath(".venv/bin/python"))
    assert not build_context_excludes(PurePosixPath("cluster/configs/fmnist-autoflip.yaml"))


def test_rayjob_entrypoint_runs_a_config_the_image_contains():
    args = _entrypoint_args()
    assert args.no_progress, "a RayJob's logs are not a terminal: pass --no-progress"
    assert PurePosixPath(str(args.config)).is_absolute(), "the job's working directory is not the image's WORKDIR: use an absolute path"
    repo_file = image_path_to_repo(str(args.config))
    assert repo_file is not None, f"{args.config}: no COPY in cluster/Dockerfile puts a file there"
    assert repo_file.is_file(), f"{args.config} maps to {repo_file.relative_to(REPO)}, which does not exist"
    cfg = _job_config()
    assert cfg.backend.name == "ray", "the RayJob's experiment should use the cluster it runs on"
    # --out must be a volume of the head pod (the job's driver runs there), or the run is lost with the pod.
    assert args.out is not None
    head = _cluster_specs()["RayJob"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    mounts = [m["mountPath"] for m in head.get("volumeMounts", [])]
    assert any(PurePosixPath(str(args.out)) == PurePosixPath(m) or PurePosixPath(m) in PurePosixPath(str(args.out)).parents
               for m in mounts), f"--out {args.out} is not on a volume of the head pod (mounts: {mounts})"


def _ray_node_resources(group: dict) -> dict[str, float]:
    """What Ray sees on one pod of `group`: num-cpus (else the container's cpu limit),
    num-gpus (else its nvidia.com/gpu limit) and the custom resources of rayStartParams."""
    params = group.get("rayStartParams", {})
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    out = {"CPU": float(params.get("num-cpus", _cpu_quantity(limits["cpu"])))}
    gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    if gpus:
        out["GPU"] = gpus
    raw = params.get("resources")
    if raw:
        out |= json.loads(raw[1:-1].replace('\\"', '"'))
    return out


def _gpu_pool(cfg):
    (pool,) = [p for p in cfg.backend.resolved_pools() if p.num_gpus_per_worker > 0]
    return pool


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob"])
def test_the_jobs_pools_run_clients_on_both_worker_groups(owner):
    """Each pool asks for its group's custom resource, so its workers go to that group only,
    and on the manifests' cluster both pools get the group's full slot count."""
    from raysim.engine.pools import pool_targets, workers_fitting

    cfg = _job_config()
    pools = cfg.backend.resolved_pools()
    spec = _cluster_specs()[owner]
    groups = spec["workerGroupSpecs"]
    assert len(pools) == len(groups), f"{owner}: want one backend.pools entry per worker group"
    nodes = [(_group_name, _ray_node_resources(g)) for _group_name, g in _groups(spec)
             for _ in range(g.get("replicas", 1) if _group_name != "head" else 1)]
    totals: dict[str, float] = {}
    for _, res in nodes:
        for k, v in res.items():
            totals[k] = totals.get(k, 0.0) + v
    for pool, count in zip(pools, pool_targets(pools, totals), strict=True):
        hosts = {name for name, res in nodes if workers_fitting(pool.demand(), res) >= 1}
        assert len(hosts) == 1, f"{owner}: pool {pool.name} fits on groups {sorted(hosts)}, want exactly one"
        (host,) = hosts
        group = next(g for g in groups if g["groupName"] == host)
        slots = sum(workers_fitting(pool.demand(), res) for name, res in nodes if name == host)
        assert count == slots == group["replicas"] * workers_fitting(pool.demand(), _ray_node_resources(group)) > 0, (
            f"{owner}: pool {pool.name} sized {count}, group {host} has {slots} slots")
    gpu = _gpu_pool(cfg)
    assert gpu.profiles == ["datacenter_gpu"], "datacenter_gpu clients should run on the GPU group"
    bound = {p for pool in pools for p in pool.profiles}
    assert set(cfg.devices.mix) - bound, "unbound profiles keep both groups busy"


@pytest.mark.parametrize("owner", ["RayCluster", "RayJob"])
def test_fractional_gpus_pack_whole_workers_onto_the_gpu_pod(owner):
    cfg = _job_config()
    pool = _gpu_pool(cfg)
    fraction = pool.num_gpus_per_worker
    assert 0 < fraction < 1, f"backend.pools[{pool.name}].num_gpus_per_worker={fraction}: the GPU group is meant to share GPUs"
    per_gpu = round(1 / fraction)
    assert math.isclose(per_gpu * fraction, 1.0), f"1/{fraction} is not a whole number of workers per GPU"
    gpu_group = _gpu_group(_cluster_specs()[owner])
    (container,) = gpu_group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    slots = per_gpu * int(limits["nvidia.com/gpu"])
    cpus_needed = slots * pool.num_cpus_per_worker
    assert _cpu_quantity(limits["cpu"]) >= cpus_needed, (
        f"{owner}: {slots} GPU workers x {pool.num_cpus_per_worker} CPU need {cpus_needed} CPUs, "
        f"the pod has {limits['cpu']}: CPUs, not GPUs, would limit the packing"
    )
    raw = gpu_group["rayStartParams"]["resources"]
    assert json.loads(raw[1:-1].replace('\\"', '"')) == {"raysim_datacenter_gpu": slots}
    assert container["image"].endswith("-cuda"), "GPU workers need the CUDA build of torch (TORCH_VARIANT=cuda)"


# ---------------------------------------------------------------- security


TOKEN_ENV = {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}


def _pod_of(where: str) -> dict:
    """The pod spec a container of `_ray_containers` belongs to."""
    owner, name, _ = where.split(" ", 2)
    if name == "submitter":
        return _only("RayJob")["spec"]["submitterPodTemplate"]["spec"]
    return dict(_groups(_cluster_specs()[owner]))[name]["template"]["spec"]


def test_token_auth_in_every_ray_container_from_a_mounted_secret_file():
    """Token mode everywhere, and the token reaches Ray as a file, never as a value in
    the environment: RAY_AUTH_TOKEN is declared empty (so KubeRay's authOptions does
    not add it from the Secret, and Ray skips it) and RAY_AUTH_TOKEN_PATH names the
    Secret mounted read-only, readable by the pod's group and nobody else."""
    secrets = set()
    for owner, spec in _cluster_specs().items():
        auth = spec.get("authOptions", {})
        assert auth.get("mode") == "token", f"{owner}: authOptions.mode must be token"
        assert auth.get("secretName"), f"{owner}: authOptions.secretName names the token Secret (KubeRay reads it)"
        secrets.add(auth["secretName"])
    assert len(secrets) == 1, f"one token Secret for both manifests, got {secrets}"
    (secret,) = secrets
    checked = 0
    for where, container in _ray_containers():
        env = {e["name"]: e for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
        assert env.get("RAY_AUTH_TOKEN") == {"name": "RAY_AUTH_TOKEN", "value": ""}, (
            f"{where}: declare RAY_AUTH_TOKEN with an empty value, got {env.get('RAY_AUTH_TOKEN')}")
        assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"] for e in env.values()), (
            f"{where}: a Secret in an environment variable")
        assert not any("secretRef" in e for e in container.get("envFrom", [])), f"{where}: a Secret as envFrom"

        token_path = PurePosixPath(env["RAY_AUTH_TOKEN_PATH"]["value"])
        (mount,) = [m for m in container.get("volumeMounts", []) if PurePosixPath(m["mountPath"]) == token_path.parent]
        assert mount.get("readOnly") is True, f"{where}: mount the token read-only"
        pod = _pod_of(where)
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        source = volume.get("secret")
        assert source and source["secretName"] == secret, f"{where}: {token_path} is not from Secret {secret}: {volume}"
        assert {"key": SECRET_KEY, "path": token_path.name} in source.get("items", []), (
            f"{where}: {token_path.name} must be the Secret's key {SECRET_KEY}")
        mode = source.get("defaultMode", 0o644)
        assert mode & 0o040 and not mode & 0o007, f"{where}: token file mode {mode:o}: group-readable, not world"
        ctx = pod["securityContext"]
        assert ctx.get("fsGroup") == ctx.get("runAsGroup"), f"{where}: fsGroup owns the file, runAsGroup must be it"
        checked += 1
    assert checked == 2 * 3 + 1, f"expected 7 Ray containers (2 x head + 2 groups, 1 submitter), checked {checked}"


def test_the_image_runs_as_the_user_the_pods_declare():
    """USER in cluster/Dockerfile is numeric (Kubernetes can only verify runAsNonRoot for
    a numeric user) and is the pods' runAsUser:runAsGroup."""
    (user,) = [rest for instr, rest in _dockerfile_instructions() if instr == "USER"][-1:]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) > 0 and int(gid) > 0, f"USER {user}: want numeric uid:gid, not root"
    for where, _ in _ray_containers():
        ctx = _pod_of(where)["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (int(uid), int(gid)), f"{where}: {ctx} vs USER {user}"


def test_nothing_is_exposed_outside_the_cluster():
    for owner, spec in _cluster_specs().items():
        head = spec["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP", f"{owner}: head serviceType {head.get('serviceType')!r}"
        assert not head.get("enableIngress"), f"{owner}: no ingress"
        svc_type = head.get("headService", {}).get("spec", {}).get("type", "ClusterIP")
        assert svc_type == "ClusterIP", f"{owner}: headService type {svc_type}"
        for name, group in _groups(spec):
            for c in group["template"]["spec"]["containers"]:
                assert not any("hostPort" in p for p in c.get("ports", [])), f"{owner} {name}: hostPort exposes a node port"
            assert not group["template"]["spec"].get("hostNetwork"), f"{owner} {name}: hostNetwork"
    for filename, i, doc in DOCS:
        if doc["kind"] == "Service":
            assert doc.get("spec", {}).get("type", "ClusterIP") not in ("LoadBalancer", "NodePort"), f"{filename}[{i}]"
        assert doc["kind"] != "Ingress", f"{filename}[{i}]: an Ingress exposes the dashboard"


def test_network_policy_admits_only_raysim_pods_operator_and_prometheus():
    policy = _only("NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    namespace = policy["metadata"]["namespace"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # Every Ray pod (and the submitter) carries the label the policy selects.
    for owner, spec in _cluster_specs().items():
        for name, group in _groups(spec):
            labels = group["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{owner} {name}: labels {labels} not selected by the NetworkPolicy"
    submitter_labels = _only("RayJob")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert selector.items() <= submitter_labels.items()

    external_ports = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "an ingress rule without `from` admits every source"
        for peer in rule["from"]:
            # A namespace and pods in it, in one peer: namespaces by the name label the API
            # server sets (nobody can forge it), pods by labels. Two separate peers, or a pod
            # selector alone, would admit pods that merely carry a label.
            assert set(peer) == {"namespaceSelector", "podSelector"}, f"peer {peer}: want both selectors, together"
            ns_labels = peer["namespaceSelector"].get("matchLabels", {})
            assert list(ns_labels) == ["kubernetes.io/metadata.name"], f"peer {peer}: select the namespace by its name"
            assert peer["podSelector"].get("matchLabels"), f"peer {peer}: an empty pod selector admits every pod"
        (peer,) = rule["from"]
        source_ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        if peer["podSelector"]["matchLabels"] == selector:
            assert source_ns == namespace and "ports" not in rule  # raysim pods among themselves, any port
            continue
        assert source_ns != namespace, f"{peer}: the operator and Prometheus run in namespaces of their own"
        assert rule.get("ports"), f"a rule for {peer} admits every port"
        app = peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        external_ports.setdefault(app, set()).update(p["port"] for p in rule["ports"])
    assert external_ports == {"kuberay-operator": {8265}, "prometheus": {8080, 9400}}, external_ports


# ---------------------------------------------------------------- monitoring


def test_pod_monitor_scrapes_ray_metrics_and_the_driver_exporter():
    monitor = _only("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoints = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints == {"metrics", "raysim-metrics"}
    cfg = _job_config()
    assert cfg.metrics.enabled and cfg.metrics.host not in ("127.0.0.1", "localhost", "::1"), (
        "the driver's exporter must listen beyond loopback for Prometheus in another pod to scrape it"
    )
    for owner, spec in _cluster_specs().items():
        for name, group in _groups(spec):
            labels = group["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{owner} {name}: not selected by the PodMonitor"
            (container,) = group["template"]["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert ports.get("metrics") == int(group["rayStartParams"]["metrics-export-port"]) == 8080, (
                f"{owner} {name}: the `metrics` port must be Ray's metrics-export-port"
            )
            if name == "head":
                assert ports.get("raysim-metrics") == cfg.metrics.port, (
                    f"{owner} head: `raysim-metrics` must be the config's metrics.port {cfg.metrics.port}"
                )
                assert ports.get("dashboard") == 8265
