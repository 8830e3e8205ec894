"""Assembles a run from its config: data, population, model, algorithm, backend, callbacks."""
from __future__ import annotations

import contextlib
import functools
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.config import (
    RESUMABLE_FIELDS,
    ConfigError,
    ExperimentConfig,
    config_identity,
    config_to_yaml,
    identity_differences,
    load_config,
)
from raysim.data.federated import FederatedDataset
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
from raysim.engine.api import FederatedAlgorithm, ServerState
from raysim.engine.backend import Backend, InProcessBackend, worker_threads
from raysim.engine.clock import ClockPredictor
from raysim.engine.loop import Callback, Evaluator, RoundLoop
from raysim.engine.runner import ClientRunner, ModelFactory
from raysim.engine.sampling import cohort_size
from raysim.engine.seeds import derive_seed
from raysim.models import build_model
from raysim.registry import import_object, is_import_path, local_packages, preload, top_package
from raysim.results.checkpoint import CHECKPOINT_DIR, Checkpointer, checkpoint_stems, newest_intact
from raysim.results.cluster_log import MERGES_FILE, WORKERS_FILE, ClusterLog
from raysim.results.failure_log import FAILURES_FILE, FailureLog
from raysim.results.health import DivergenceStop
from raysim.results.plots import PLOTS_DIR, draw_run_plots
from raysim.results.progress import round_reporter
from raysim.results.round_log import ROUNDS_FILE, RoundLog, read_rounds
from raysim.results.run_dir import LOCK_FILE, create_run_dir, run_lock, write_atomic
from raysim.results.summary import summarize, write_summary
from raysim.results.tracking import MLFLOW_DIR, TENSORBOARD_DIR, trackers
from raysim.telemetry.prometheus import PrometheusExporter

CONFIG_FILE = "config.yaml"
RUN_OWNED_FOLDERS = (PLOTS_DIR, TENSORBOARD_DIR, MLFLOW_DIR)


def model_factory(cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int,
                  example_input: torch.Tensor) -> ModelFactory:
    """Builds the model for an architecture record: the original model, or the original
    rebuilt by the algorithm's `rebuild_model` hook (a pruned architecture, say)."""
    algorithm = ALGORITHMS.get(cfg.algorithm.name)
    rebuild = getattr(algorithm, "rebuild_model", FederatedAlgorithm.rebuild_model)

    def build(arch):
        # The same initial weights for every method compared under one seed.
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = build_model(cfg.model, input_shape, num_classes)
        if arch is not None:
            rebuild(model, arch, example_input)
        return model

    return build


def build_runner(cfg: ExperimentConfig, population: Population, dataset: FederatedDataset,
                 device: str = "cpu") -> ClientRunner:
    """The client side of a run, built the same way in the driver and in every Ray worker."""
    example = torch.tensor(dataset.example_inputs(1))
    factory = model_factory(cfg, dataset.input_shape, dataset.num_classes, example)
    vectorize = cfg.backend.clients_per_call if cfg.backend.vectorize else 0  # clients per vectorised group
    return ClientRunner(build_algorithm(cfg, factory, example), dataset, population, factory, cfg.eval.batch_size,
                        device, vectorize)


def plugin_import_paths(cfg: ExperimentConfig) -> list[str]:
    """Every plug-in the config names by import path (workers must import them too)."""
    names = [cfg.model.name, cfg.algorithm.name, cfg.data.dataset, cfg.data.partition.scheme, *cfg.devices.mix]
    return [n for n in names if is_import_path(n)]


def shipped_plugins(cfg: ExperimentConfig) -> dict[str, object]:
    """The config's import-path plug-ins from packages that are not installed, resolved here
    and marked for pickling by value: Ray workers receive their code with the runner
    factory, on any cluster, instead of importing it from a path only this machine has."""
    import ray.cloudpickle

    paths = plugin_import_paths(cfg)
    local = set(local_packages(paths))
    for name, module in list(sys.modules.items()):
        if top_package(name) in local and module is not None:
            ray.cloudpickle.register_pickle_by_value(module)
    return {p: import_object(p) for p in paths if top_package(p) in local}


def build_worker_runner(cfg: ExperimentConfig, population: Population, plugins: dict[str, object],
                        dataset: FederatedDataset, device: str = "cpu") -> ClientRunner:
    """build_runner on a Ray worker, with the plug-ins the driver shipped."""
    preload(plugins)
    return build_runner(cfg, population, dataset, device)


def build_backend(cfg: ExperimentConfig, runner: ClientRunner) -> Backend:
    """In-process: `runner` (the driver's) runs the clients; Ray: every worker builds its own."""
    if cfg.backend.name == "inprocess":
        return InProcessBackend(runner, worker_threads(cfg.backend))
    from raysim.engine.ray_backend import RayBackend

    try:
        return RayBackend(functools.partial(build_worker_runner, cfg, runner.population, shipped_plugins(cfg)),
                          runner.dataset, cfg.backend, runner.population)
    except ValueError as exc:  # the pool does not fit the cluster
        raise ConfigError(str(exc)) from None


@contextlib.contextmanager
def backend_session(cfg: ExperimentConfig):
    """The Ray connection a run needs, if any, for as long as it lasts."""
    if cfg.backend.name == "inprocess":
        yield
        return
    from raysim.engine.ray_backend import ray_session

    # With metrics on, a local Ray also runs its dashboard, which serves Ray's own metrics
    # and writes the service-discovery file Prometheus reads (dashboards/prometheus.yml).
    with ray_session(cfg.backend, dashboard=cfg.metrics.enabled):
        yield


def execute(cfg: ExperimentConfig, run_dir: Path, resume: bool = False, progress: bool | None = None,
            callbacks: Sequence[Callback] = (), quiet: bool = False) -> dict:
    """Run (or continue) the experiment in `run_dir` and return its summary. `callbacks`
    run after the built-in ones (round log, failures, checkpoints) and may stop the run.
    `progress` (None: the config's output.progress): a bar on a terminal; without it, or
    off a terminal, one line per round; `quiet`: neither. One process at a time works in a
    folder; a new run that fails before its first round leaves no folder behind."""
    with run_lock(run_dir):
        try:
            # Data, population, model and algorithm first: their errors come before Ray starts.
            dataset = load_federated_dataset(cfg.data, cfg.seed)
            cohort = cohort_size(cfg.clients.per_round, dataset.num_clients)
            population = Population.from_mix(dataset.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
            runner = build_runner(cfg, population, dataset)  # the driver's algorithm and model factory
            with backend_session(cfg):
                return _execute(cfg, runner, cohort, run_dir, resume, progress, quiet, list(callbacks))
        except BaseException:
            if not resume:
                discard_unstarted(run_dir)
            raise


def discard_unstarted(run_dir: Path) -> bool:
    """Remove a run folder no round was logged in (only the files a run writes: anything
    else in it is left, with the folder). Returns whether the folder is gone."""
    if (run_dir / ROUNDS_FILE).exists():
        return False
    for name in (CONFIG_FILE, FAILURES_FILE, WORKERS_FILE, MERGES_FILE, LOCK_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in RUN_OWNED_FOLDERS:  # what trackers and plots may have started writing
        shutil.rmtree(run_dir / folder, ignore_errors=True)
    for stem in checkpoint_stems(run_dir):
        stem.with_suffix(".json").unlink(missing_ok=True)
        stem.with_suffix(".safetensors").unlink(missing_ok=True)
    for folder in (run_dir / CHECKPOINT_DIR, run_dir):
        with contextlib.suppress(OSError):
            folder.rmdir()
    return not run_dir.exists()


def resume_state(cfg: ExperimentConfig, run_dir: Path, algorithm: FederatedAlgorithm,
                 factory: ModelFactory) -> ServerState:
    """The newest intact checkpoint, checked against the config and the model before any
    work: a damaged newer checkpoint is passed over with a warning; a config that differs
    from the checkpoint's, an architecture that does not fit, or a finished run is refused."""
    found = newest_intact(run_dir)
    if found is None:
        raise ConfigError(f"--resume {run_dir}: no intact checkpoint in {run_dir / CHECKPOINT_DIR} to resume from")
    state, identity, warnings = found
    for w in warnings:
        print(f"raysim: warning: {w}", file=sys.stderr)
    changed = identity_differences(identity, config_identity(cfg), config_identity(ExperimentConfig()))
    if changed:
        raise ConfigError(f"--resume {run_dir}: {CONFIG_FILE} differs from the config checkpoint round "
                          f"{state.round} was made with, in {', '.join(changed)}; restore those fields, or start "
                          f"a new run (a resume may change only {', '.join(RESUMABLE_FIELDS)})")
    expected = {k: tuple(v.shape) for k, v in factory(algorithm.broadcast(state).arch).state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in state.weights.items()}
    if expected != saved:
        wrong = sorted(k for k in expected.keys() | saved.keys() if expected.get(k) != saved.get(k))
        raise ConfigError(f"--resume {run_dir}: checkpoint round {state.round} does not fit the model "
                          f"(tensors {', '.join(wrong[:5])}); it was made with another model or architecture")
    if state.round >= cfg.rounds:
        raise ConfigError(f"--resume {run_dir}: the run has finished its {state.round} rounds; to extend it: "
                          f"raysim run --resume {run_dir} --set rounds=N with N > {state.round}")
    return state


def _execute(cfg: ExperimentConfig, runner: ClientRunner, cohort: int, run_dir: Path, resume: bool,
             progress: bool | None, quiet: bool, user_callbacks: list[Callback]) -> dict:
    algorithm, factory = runner.algorithm, runner.model_factory
    dataset, population = runner.dataset, runner.population

    rows: list[dict] = []
    state = algorithm.init_state(factory(None).state_dict())
    if resume:
        state = resume_state(cfg, run_dir, algorithm, factory)
        rows = [r for r in read_rounds(run_dir) if r["round"] <= state.round]
        write_atomic(run_dir / CONFIG_FILE, config_to_yaml(cfg).encode())  # a longer run keeps its new length

    round_log = RoundLog(run_dir, rows)
    stop = DivergenceStop()
    callbacks: list[Callback] = [round_log, FailureLog(run_dir, state.round if resume else None),
                                 Checkpointer(run_dir, cfg.output.checkpoint_every, cfg.rounds, config_identity(cfg))]
    if not quiet:
        callbacks.append(round_reporter(cfg.rounds, state.round, f"{cfg.name} [{algorithm.name}]",
                                        bar=cfg.output.progress if progress is None else progress,
                                        explores=bool(ALGORITHMS.info(cfg.algorithm.name).get("explores"))))
    exporter = None
    if cfg.metrics.enabled:  # closes itself at run end (after linger); the finally covers a failed run
        exporter = PrometheusExporter(cfg.metrics, experiment=cfg.name, algorithm=algorithm.name,
                                      population=len(population))
        callbacks.append(exporter)
    if cfg.stop_on_divergence:
        callbacks.append(stop)
    callbacks += trackers(cfg, run_dir, rows)
    callbacks += user_callbacks
    backend: Backend | None = None
    try:
        started = time.perf_counter()
        backend = build_backend(cfg, runner)
        backend.wait_ready()
        startup_s = time.perf_counter() - started  # worker start-up: its own number, not round 1's
        callbacks.append(ClusterLog(run_dir, backend, state.round if resume else None))
        evaluator = Evaluator(dataset, factory, algorithm, backend, seed=cfg.seed, clients=cfg.eval.clients,
                              max_clients=cfg.eval.max_clients, batch_size=cfg.eval.batch_size)
        loop = RoundLoop(algorithm, backend, population, evaluator, callbacks, seed=cfg.seed, rounds=cfg.rounds,
                         cohort=cohort, eval_every=cfg.eval.every,
                         deadline_s=cfg.devices.deadline_s, use_availability=cfg.devices.use_availability,
                         clock=ClockPredictor(dataset, population, factory), overcommit=cfg.devices.overcommit)
        loop.run(state)
    finally:
        if exporter is not None:
            exporter.close()
        if backend is not None:
            backend.close()
    stopped = None
    if stop.stopped_at is not None:
        stopped = f"diverged at round {stop.stopped_at} (stop_on_divergence)"
    elif round_log.rows and round_log.rows[-1]["round"] < cfg.rounds:
        stopped = f"a callback stopped the run after round {round_log.rows[-1]['round']}"
    summary = summarize(round_log.rows, run_dir, algorithm.name, startup_s, stopped)
    write_summary(summary, run_dir)
    draw_run_plots(run_dir, round_log.rows, f"{cfg.name} [{algorithm.name}]")
    return summary


def new_run(cfg: ExperimentConfig, out: Path | None = None) -> Path:
    run_dir = create_run_dir(out or cfg.output.dir, cfg.name)
    write_atomic(run_dir / CONFIG_FILE, config_to_yaml(cfg).encode())
    return run_dir


def resumed_config(run_dir: Path) -> ExperimentConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run folder (no {CONFIG_FILE})")
    return load_config(path)
