"""The experiment configuration: typed, validated, parsed in one place.

Every section forbids unknown fields, so a typo fails before any work with a
message naming the field and the fields (or values) that are allowed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field."""


class _Section(BaseModel):
    # allow_inf_nan=False: an infinite learning rate or a NaN share is refused here, not
    # discovered later as every client failing.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _registry(kind: str):
    """The registry of one kind of plug-in, imported when a config is validated (the
    registries' modules import this one)."""
    if kind in ("model", "algorithm"):  # their code imports torch: names come from the catalog
        from raysim.catalog import ALGORITHMS, MODELS
        return MODELS if kind == "model" else ALGORITHMS
    if kind == "device":
        from raysim.devices import PROFILES
        return PROFILES
    from raysim.data.loading import DATASETS, PARTITIONERS
    return DATASETS if kind == "dataset" else PARTITIONERS


class PartitionConfig(_Section):
    scheme: str = Field("iid", description="a registered partitioner (iid, dirichlet, classes, natural) or package.module:attribute")
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration over labels")
    classes_per_client: int = Field(2, ge=1, description="k for the pathological split")
    min_samples: int = Field(2, ge=1, description="Dirichlet redraws until every client has this many")

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _registry("partitioner").check(value)


class SyntheticConfig(_Section):
    """LEAF's Synthetic(alpha, beta): generated in-process, needs no download."""

    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    dimension: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)
    mean_samples: float = Field(4.0, gt=0, description="log-normal mean of samples per user (log scale)")
    min_samples: int = Field(20, ge=2, description="samples per user are clipped to [min_samples, max_samples]")
    max_samples: int = Field(1000, ge=2)

    @model_validator(mode="after")
    def _sample_range(self) -> "SyntheticConfig":
        if self.min_samples > self.max_samples:
            raise ValueError(f"min_samples={self.min_samples} exceeds max_samples={self.max_samples}")
        return self
    test_fraction: float = Field(0.2, gt=0, lt=1)
    resident: bool = Field(True, description="False: no rows in memory; each client's rows are generated where it "
                           "runs, from its own seed (populations of millions; raysim/data/synthetic_lazy.py)")
    test_users: int = Field(1000, ge=1, description="with resident=false: the users whose test rows make the "
                            "global test set (a fixed seeded sample, so the test set stays bounded)")


class DataConfig(_Section):
    dataset: str = Field("synthetic", description="a registered dataset or package.module:attribute")
    path: Path | None = Field(None, description="dataset folder; None means the dataset's default location")
    num_clients: int = Field(30, ge=1, description="ignored by the natural partition (one client per LEAF user) unless smaller")
    partition: PartitionConfig = PartitionConfig()
    holdout_fraction: float = Field(0.1, ge=0, lt=1, description="share of each client's data kept for client-side evaluation")
    max_train_samples: int | None = Field(None, ge=1, description="subsample the training set (fast experiments)")
    max_test_samples: int | None = Field(None, ge=1)
    synthetic: SyntheticConfig = SyntheticConfig()

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _registry("dataset").check(value)


class ModelConfig(_Section):
    name: str = Field("logreg", description="a registered model or package.module:attribute")
    hidden: int = Field(200, ge=1, description="MLP hidden width / LSTM hidden size")
    layers: int = Field(2, ge=1, description="MLP hidden layers / LSTM layers")
    embedding: int = Field(8, ge=1, description="char_lstm embedding size")

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return _registry("model").check(value)


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class ClientConfig(_Section):
    per_round: float = Field(10, gt=0, description="clients per round: a count (>= 1) or a fraction of the population (< 1)")
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_decay: float = Field(1.0, gt=0, le=1, description="client lr multiplier applied once per round")

    @model_validator(mode="after")
    def _count_or_fraction(self) -> "ClientConfig":
        if self.per_round >= 1 and self.per_round != int(self.per_round):
            raise ValueError("per_round must be a whole count (>= 1) or a fraction in (0, 1)")
        return self


class PruningConfig(_Section):
    """AutoFLIP and the pruning baselines (see docs/method.md); ignored by fedavg."""

    sparsity: float = Field(0.5, ge=0, lt=1, description="unstructured target: share of prunable weights zeroed (after structured removal)")
    structured_fraction: float = Field(0.3, ge=0, lt=1, description="q_s: share of units removed per prunable layer")
    allocation: Literal["global", "layer"] = "global"
    threshold: Literal["kthvalue", "sort"] = "kthvalue"
    ramp_rounds: int = Field(5, ge=0, description="sparsity ramps linearly from 0 to the target over these rounds; at a constant sparsity the adaptive mask cannot change (pruned coordinates get no update signal), so the ramp is where adaptation acts")
    normalise: Literal["minmax", "robust"] = "minmax"
    alpha: float = Field(0.5, ge=0, le=1, description="running guidance: G_t = alpha G_(t-1) + (1 - alpha) fresh")
    regrowth: Literal["allow", "freeze"] = "allow"
    growth: Literal["none", "gradient", "random"] = Field("none", description="after the ramp, each round drop the lowest-guidance kept weights and grow as many pruned ones per tensor, chosen by the clients' summed gradients of pruned weights (gradient, RigL-style, the signal uploaded and billed) or at random (SET-style control); none: the mask moves only while the sparsity ramps")
    drop_fraction: float = Field(0.3, ge=0, le=1, description="growth: share of each tensor's kept weights moved at the first adjustment, annealed to 0 on a cosine")
    anneal_rounds: int = Field(10, ge=1, description="growth: rounds after the ramp over which the drop fraction falls to 0")
    grow_topk: float = Field(0.02, gt=0, le=1, description="growth: each client uploads its largest pruned gradients, at most this share of a tensor's kept entries")
    adjust_every: int = Field(3, ge=1, description="prunefl, feddst: rounds between mask readjustments (PruneFL's importance upload, FedDST's local drop and grow)")
    explore_fraction: float = Field(1.0, gt=0, le=1)
    explore_epochs: int = Field(5, ge=1)
    explore_patience: int = Field(1, ge=1, description="stop exploring after this many epochs without a lower epoch-mean loss")
    secure_aggregation: bool = Field(False, description="the server sees only sums of updates, so clients upload the squared deviations adaptation needs (billed); off: computed from each decoded update on the worker")
    warm_start: bool = Field(True, description="start round 1 from the initial weights plus the explorers' sample-weighted mean change (each explorer uploads its change too, billed); benchmark S measured +0.8 points over a cold start at P1")
    layer_sparsity: dict[str, float] | None = Field(None, description="random baseline: per-layer sparsity (default: `sparsity` everywhere)")


    @model_validator(mode="after")
    def _growth_needs_regrowth(self) -> "PruningConfig":
        if self.growth != "none" and self.regrowth == "freeze":
            raise ValueError(f"growth={self.growth!r} grows pruned weights back, which regrowth='freeze' forbids; "
                             "set regrowth: allow or growth: none")
        return self


class AlgorithmConfig(_Section):
    name: str = Field("fedavg", description="a registered algorithm or package.module:attribute")
    pruning: PruningConfig = PruningConfig()
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.0, ge=0, lt=1, description="server momentum, applied identically to every method")
    params: dict[str, Any] = Field(default_factory=dict, description="the algorithm's own parameters, checked against "
                                   "its `Params` model (e.g. fedprox: mu; fedadam: beta1, beta2, tau)")

    @field_validator("name")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        return _registry("algorithm").check(value)

    @model_validator(mode="after")
    def _params_fit_the_algorithm(self) -> "AlgorithmConfig":
        if self.params:  # empty params suit every algorithm (and need no import while this module loads)
            algorithm_params(self)
        return self


def algorithm_params(cfg: AlgorithmConfig) -> BaseModel | None:
    """`cfg.params` validated by the algorithm's `Params` (a pydantic model; unknown fields
    refused), or None for an algorithm that declares none (then params must be empty)."""
    declared = getattr(_registry("algorithm").get(cfg.name), "Params", None)
    if declared is None:
        if cfg.params:
            raise ValueError(f"algorithm.params: {cfg.name} takes no parameters (got {', '.join(cfg.params)})")
        return None
    try:
        return declared.model_validate(cfg.params)
    except ValidationError as exc:
        details = "; ".join(f"algorithm.params.{'.'.join(map(str, e['loc']))}: "
                            + (f"unknown field; allowed fields: {', '.join(sorted(declared.model_fields))}"
                               if e["type"] == "extra_forbidden" else f"{e['msg']} (got {e.get('input')!r})")
                            for e in exc.errors())
        raise ValueError(details) from None


class DevicesConfig(_Section):
    mix: dict[str, float] = Field(
        default_factory=lambda: {"phone_low": 0.3, "phone_mid": 0.4, "phone_high": 0.2, "laptop": 0.1},
        description="device profile name -> share of the population",
    )
    deadline_s: float | None = Field(None, gt=0, description="simulated seconds; slower clients are dropped")
    use_availability: bool = Field(True, description="sample only clients online this round")
    overcommit: float = Field(
        1.0, ge=1.0,
        description="sample this many times the cohort; the round closes (on simulated time) once a cohort's worth "
                    "of clients is predicted to have reported, and later ones are dropped as stragglers",
    )

    @field_validator("mix")
    @classmethod
    def _known_profiles(cls, mix: dict[str, float]) -> dict[str, float]:
        for name in mix:
            _registry("device").check(name)
        return mix


class PayloadConfig(_Section):
    compression: Literal["none", "zstd"] = "none"
    zstd_level: int = Field(3, ge=1, le=22)


class EvalConfig(_Section):
    every: int = Field(1, ge=1, description="evaluate every k rounds (and always after the last)")
    clients: bool = Field(True, description="also evaluate on clients' held-out data")
    max_clients: int = Field(100, ge=1, description="clients evaluated on held-out data per evaluation")
    batch_size: int = Field(1024, ge=1)


class OutputConfig(_Section):
    dir: Path = Path("runs")
    checkpoint_every: int = Field(1, ge=1)
    progress: bool = True


# Resource names a pool declares through its own fields, not through `resources`.
_RESERVED_RESOURCES = {"CPU": "num_cpus_per_worker", "GPU": "num_gpus_per_worker"}


class PoolConfig(_Section):
    """One group of identical Ray workers (e.g. a KubeRay worker group); see docs/cluster.md."""

    name: str = Field(description="a plain name (letters, digits, '.', '_', '-'), unique among the pools")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker of the pool declares (and torch threads it uses)")
    num_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each worker declares; 0.25 puts 4 workers on one GPU")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources each worker declares "
                                        "(e.g. {raysim_gpu: 1}: only nodes started with that resource hold it)")
    num_workers: int | Literal["fill"] = Field("fill", description="workers of this pool; fill: as many as the "
                                               "cluster's resources hold after the pools listed with counts")
    profiles: list[str] = Field(default_factory=list, description="device profiles whose clients run only on this "
                                "pool (affinity); the pool also takes clients of unbound profiles")

    @field_validator("name")
    @classmethod
    def _plain_pool_name(cls, value: str) -> str:
        return require_plain_name(value, "pool name ", "it names round-log columns")

    @field_validator("num_workers")
    @classmethod
    def _positive_count(cls, value: int | str) -> int | str:
        if value != "fill" and value < 1:
            raise ValueError(f"num_workers must be at least 1 or 'fill' (got {value})")
        return value

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        for key, amount in resources.items():
            if key in _RESERVED_RESOURCES:
                raise ValueError(f"resources.{key}: set {_RESERVED_RESOURCES[key]} instead")
            if not amount > 0:
                raise ValueError(f"resources.{key}={amount:g}: each worker must ask for a positive amount")
        return resources

    @field_validator("profiles")
    @classmethod
    def _known_pool_profiles(cls, profiles: list[str]) -> list[str]:
        for name in profiles:
            _registry("device").check(name)
        if len(set(profiles)) != len(profiles):
            raise ValueError(f"profiles lists a profile twice: {profiles}")
        return profiles

    def demand(self) -> dict[str, float]:
        """What one worker of the pool asks Ray for, by Ray resource name."""
        out = {"CPU": self.num_cpus_per_worker, **self.resources}
        if self.num_gpus_per_worker > 0:
            out["GPU"] = self.num_gpus_per_worker
        return out


class BackendConfig(_Section):
    name: Literal["ray", "inprocess"] = Field(
        "ray", description="ray: a pool of worker actors; inprocess: every client in the driver (tests, debugging)"
    )
    address: str | None = Field(
        None, description="Ray cluster to join; null: $RAY_ADDRESS if set, else a local instance started and stopped by the run"
    )
    num_workers: int | None = Field(None, ge=1, description="worker actors; null: as many as the cluster's resources fit")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker declares (and torch threads it uses)")
    num_gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each worker declares; 0.25 puts 4 workers on one GPU")
    fan_in: int = Field(4, ge=2, description="partials merged per node of the aggregation tree")
    clients_per_call: int = Field(32, ge=1, description="clients sent to a worker per remote call")
    vectorize: bool = Field(
        False, description="train the clients of one call (up to clients_per_call) as one vectorised computation "
                           "(torch.func.vmap) where the algorithm and model allow it: plain FedAvg-style SGD, no "
                           "masks, no buffers, no dropout; equal to one at a time within float tolerance, not bit for bit"
    )
    max_retries: int = Field(3, ge=0, description="times a dead worker's clients are retried within one round")
    placement_timeout_s: float = Field(
        30.0, gt=0, description="seconds a new, replacement or first worker may wait for a node to take it "
                                "(building it may take longer); past it, the pool shrinks to what the cluster "
                                "holds (a lost node's CPUs are gone)"
    )
    build_timeout_s: float = Field(
        600.0, gt=0, description="seconds a placed worker may take to build (import torch, map the data, build "
                                 "its runner); past it, the worker is given up like one no node took"
    )
    pools: list[PoolConfig] | None = Field(
        None, description="groups of workers with their own resources (a CPU group and a GPU group); null: one pool "
                          "of num_workers x (num_cpus_per_worker, num_gpus_per_worker)"
    )
    balance: Literal["measured", "predicted"] = Field(
        "measured", description="how clients are split between pools: measured: by each pool's throughput observed "
                                "in earlier rounds; predicted: by predicted cost alone (the split, and so the "
                                "results, repeat bit for bit)"
    )

    @model_validator(mode="after")
    def _pools_fit(self) -> "BackendConfig":
        if self.pools is None:
            return self
        if not self.pools:
            raise ValueError("pools is empty: list at least one pool, or set pools: null for the single pool")
        flat = [f for f in ("num_workers", "num_cpus_per_worker", "num_gpus_per_worker")
                if getattr(self, f) != BackendConfig.model_fields[f].default]
        if flat:
            raise ValueError(f"pools replaces {', '.join(flat)}: give each pool its own num_workers, "
                             "num_cpus_per_worker and num_gpus_per_worker and leave the flat fields unset")
        names = [p.name for p in self.pools]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"pools: the pool name {', '.join(twice)} is used more than once; pool names must be unique")
        claimed: dict[str, str] = {}
        for pool in self.pools:
            for profile in pool.profiles:
                if profile in claimed:
                    raise ValueError(f"pools: profile {profile} is bound to both pool {claimed[profile]} and pool "
                                     f"{pool.name}; bind each profile to one pool")
                claimed[profile] = pool.name
        return self

    def resolved_pools(self) -> list[PoolConfig]:
        """The pools, or the single pool the flat fields describe (named "default")."""
        if self.pools is not None:
            return list(self.pools)
        return [PoolConfig(name="default", num_cpus_per_worker=self.num_cpus_per_worker,
                           num_gpus_per_worker=self.num_gpus_per_worker, num_workers=self.num_workers or "fill")]


class MetricsConfig(_Section):
    enabled: bool = Field(False, description="export Prometheus metrics from the driver")
    host: str = Field("127.0.0.1", description="address the exporter binds; loopback unless you open it on purpose")
    port: int = Field(9400, ge=0, le=65535, description="exporter port; 0 picks a free one")
    linger_s: float = Field(0.0, ge=0, description="seconds the exporter stays up after the run, for the last scrape")
    pushgateway: str | None = Field(None, description="host:port of a Pushgateway to push the final values to")


# tracking field -> the pip extra it needs and the modules that extra installs
TRACKING_EXTRAS = {"tensorboard": ("tensorboard", ("tensorboard",)),
                   "mlflow": ("mlflow", ("mlflow", "sqlalchemy", "alembic"))}


class TrackingConfig(_Section):
    """Experiment tracking written under the run folder (raysim/results/tracking.py)."""

    tensorboard: bool = Field(False, description="TensorBoard event files in <run>/tensorboard (extra: tensorboard)")
    mlflow: bool = Field(False, description="an MLflow run in <run>/mlflow/mlflow.db, a SQLite store (extra: mlflow)")

    @field_validator("tensorboard", "mlflow")
    @classmethod
    def _extra_installed(cls, on: bool, info) -> bool:
        import importlib.util

        extra, modules = TRACKING_EXTRAS[info.field_name]
        missing = [m for m in modules if on and importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"needs the '{extra}' extra ({', '.join(missing)} not installed): pip install "
                             f"'raysim[{extra}]' (in a checkout: .venv/bin/pip install -c constraints.txt -e "
                             f"'.[{extra}]'), or set tracking.{info.field_name}: false")
        return on


# A run folder is named `<name>-<timestamp>` under output.dir: the name must not reach elsewhere.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def is_plain_name(name: str) -> bool:
    return bool(PLAIN_NAME.fullmatch(name)) and ".." not in name


def require_plain_name(value: str, what: str, why: str) -> str:
    """`value` if it is a plain name, else the ValueError a validator raises (`what` prefixes it)."""
    if not is_plain_name(value):
        raise ValueError(f"{what}{value!r} is not a plain name: use up to 100 letters, digits, '.', '_' and '-', "
                         f"starting with a letter or digit ({why})")
    return value


class ExperimentConfig(_Section):
    name: str = Field("experiment", description="a plain name (letters, digits, '.', '_', '-'): the run folder is "
                                                "<output.dir>/<name>-<timestamp>")
    seed: int = Field(0, ge=0)
    rounds: int = Field(10, ge=1)
    stop_on_divergence: bool = Field(False, description="end the run after a round where most clients failed or the "
                                                        "training loss is not finite (always warned in the summary)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    clients: ClientConfig = ClientConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    devices: DevicesConfig = DevicesConfig()
    payload: PayloadConfig = PayloadConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    backend: BackendConfig = BackendConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return require_plain_name(value, "", "it names the run folder inside output.dir")

    @model_validator(mode="after")
    def _compatible(self) -> "ExperimentConfig":
        """What registered plug-ins say about each other (import-path plug-ins are checked when built)."""
        datasets, ds = _registry("dataset"), self.data.dataset
        scheme, model = self.data.partition.scheme, self.model.name
        has_users = datasets.info(ds).get("has_users")
        if _registry("partitioner").info(scheme).get("needs_users") and has_users is False:
            allowed = [n for n in datasets.names() if datasets.info(n)["has_users"]]
            raise ValueError(f"data.partition.scheme={scheme} needs per-user data; allowed datasets: "
                             f"{', '.join(allowed)} (got {ds})")
        mix = set(self.devices.mix)
        for pool in self.backend.pools or []:
            absent = [p for p in pool.profiles if p not in mix]
            if absent:
                raise ValueError(f"backend.pools[{pool.name}].profiles: {', '.join(absent)} not in devices.mix, so no "
                                 f"client has it; remove it or add it to devices.mix ({', '.join(self.devices.mix)})")
        takes, kind = _registry("model").info(model).get("inputs"), datasets.info(ds).get("inputs")
        if takes and kind and kind not in takes:
            allowed = [n for n in datasets.names() if datasets.info(n)["inputs"] in takes]
            raise ValueError(f"model.name={model} cannot take data.dataset={ds}; it takes: {', '.join(allowed)}")
        return self


DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


def _format_error(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed fields: {', '.join(_allowed_fields(model, err['loc'][:-1]))}"
        elif err["type"] != "value_error":  # cross-field rules already name what they got
            msg += f" (got {err.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(model.model_fields)


def set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings; values are parsed as YAML scalars (3, 0.1, true, null)."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set rounds=5")
        out.append((key.strip(), yaml.safe_load(raw) if raw != "" else ""))
    return out


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config (the embedded default when `path` is None) and apply `--set` overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.load(path.read_text(), Loader=_StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if tree is None:
        raise ConfigError(f"{path}: the file is empty; write the fields to change (e.g. rounds: 5), or omit the "
                          "config to run the embedded default")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(tree).__name__}")
    for key, value in parse_overrides(overrides or []):
        set_path(tree, key, value)
    return config_from_dict(tree, source=str(path))


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"duplicate key {key!r} on line {key_node.start_mark.line + 1}; keep one of them")
            seen.add(key)
        return super().construct_mapping(node, deep)


def config_from_dict(tree: dict, source: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + _format_error(exc, ExperimentConfig)) from None


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# What `--resume DIR --set ...` may change: fields that cannot change the rounds already
# run, only how many more there are and where and how they run.
RESUMABLE_FIELDS = ("rounds", "stop_on_divergence", "output.progress", "backend", "metrics")


def _is_resumable(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS)


def config_identity(cfg: ExperimentConfig) -> dict:
    """The resolved config without the resumable fields: what a checkpoint must match."""
    tree = cfg.model_dump(mode="json")
    for field in RESUMABLE_FIELDS:
        *parents, leaf = field.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node.pop(leaf)
    return tree


def identity_differences(saved: dict, current: dict, defaults: dict | None = None, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two identities differ. A field the saved identity
    lacks (added to raysim after the checkpoint was written) matches when the current value
    is that field's default in `defaults` (config_identity of ExperimentConfig())."""
    out = []
    defaults = defaults or {}
    for key in sorted(saved.keys() | current.keys()):
        a, b, d = saved.get(key), current.get(key), defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_differences(a, b, d if isinstance(d, dict) else {}, f"{prefix}{key}.")
        elif key not in saved and isinstance(defaults, dict) and key in defaults and b == d:
            continue
        elif a != b:
            out.append(prefix + key)
    return out


def resume_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """`cfg` with `--set` overrides on a resumed run; only the resumable fields may change."""
    pairs = parse_overrides(overrides)
    fixed = [k for k, _ in pairs if not _is_resumable(k)]
    if fixed:
        raise ConfigError(f"--resume: --set {', '.join(fixed)} would change the rounds already run; a resumed run "
                          f"may only set {', '.join(RESUMABLE_FIELDS)} (e.g. --set rounds=60 to extend it)")
    tree = cfg.model_dump(mode="json")
    for key, value in pairs:
        set_path(tree, key, value)
    return config_from_dict(tree, source="--resume --set")
