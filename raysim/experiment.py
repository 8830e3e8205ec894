"""Assembles a run from its config: data, population, model, algorithm, backend, callbacks."""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from raysim.algorithms import ALGORITHMS, build_algorithm
from raysim.config import ConfigError, ExperimentConfig, config_to_yaml, load_config
from raysim.data.federated import FederatedDataset
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
from raysim.engine.api import FederatedAlgorithm
from raysim.engine.backend import Backend, InProcessBackend, worker_threads
from raysim.engine.clock import ClockPredictor
from raysim.engine.loop import Callback, Evaluator, RoundLoop
from raysim.engine.runner import ClientRunner, ModelFactory
from raysim.engine.sampling import cohort_size
from raysim.engine.seeds import derive_seed
from raysim.models import build_model
from raysim.registry import import_object, is_import_path, local_packages, preload, top_package
from raysim.results.checkpoint import Checkpointer, latest_checkpoint, load_checkpoint
from raysim.results.failure_log import FailureLog
from raysim.results.progress import round_reporter
from raysim.results.round_log import RoundLog, read_rounds
from raysim.results.run_dir import create_run_dir, write_atomic
from raysim.results.summary import summarize, write_summary
from raysim.telemetry.prometheus import PrometheusExporter

CONFIG_FILE = "config.yaml"


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
    example = torch.tensor(dataset.train.x[:1])
    factory = model_factory(cfg, dataset.input_shape, dataset.num_classes, example)
    return ClientRunner(build_algorithm(cfg, factory, example), dataset, population, factory, cfg.eval.batch_size, device)


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
                          runner.dataset, cfg.backend)
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
    off a terminal, one line per round; `quiet`: neither."""
    dataset = load_federated_dataset(cfg.data, cfg.seed)  # a data error fails before Ray starts
    with backend_session(cfg):
        return _execute(cfg, dataset, run_dir, resume, progress, quiet, list(callbacks))


def _execute(cfg: ExperimentConfig, dataset: FederatedDataset, run_dir: Path, resume: bool,
             progress: bool | None, quiet: bool, user_callbacks: list[Callback]) -> dict:
    population = Population.from_mix(dataset.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
    runner = build_runner(cfg, population, dataset)  # the driver's algorithm and model factory
    algorithm, factory = runner.algorithm, runner.model_factory

    rows: list[dict] = []
    state = algorithm.init_state(factory(None).state_dict())
    if resume:
        stem = latest_checkpoint(run_dir)
        if stem is None:
            raise ConfigError(f"--resume {run_dir}: no checkpoint in {run_dir / 'checkpoints'} to resume from")
        state = load_checkpoint(stem)
        rows = [r for r in read_rounds(run_dir) if r["round"] <= state.round]

    callbacks: list[Callback] = [RoundLog(run_dir, rows), FailureLog(run_dir),
                                 Checkpointer(run_dir, cfg.output.checkpoint_every, cfg.rounds)]
    round_log = callbacks[0]
    if not quiet:
        callbacks.append(round_reporter(cfg.rounds, state.round, f"{cfg.name} [{algorithm.name}]",
                                        bar=cfg.output.progress if progress is None else progress,
                                        explores=bool(ALGORITHMS.info(cfg.algorithm.name).get("explores"))))
    exporter = None
    if cfg.metrics.enabled:  # closes itself at run end (after linger); the finally covers a failed run
        exporter = PrometheusExporter(cfg.metrics, experiment=cfg.name, algorithm=algorithm.name,
                                      population=len(population))
        callbacks.append(exporter)
    callbacks += user_callbacks
    backend: Backend | None = None
    try:
        started = time.perf_counter()
        backend = build_backend(cfg, runner)
        backend.wait_ready()
        startup_s = time.perf_counter() - started  # worker start-up: its own number, not round 1's
        evaluator = Evaluator(dataset, factory, algorithm, backend, seed=cfg.seed, clients=cfg.eval.clients,
                              max_clients=cfg.eval.max_clients, batch_size=cfg.eval.batch_size)
        loop = RoundLoop(algorithm, backend, population, evaluator, callbacks, seed=cfg.seed, rounds=cfg.rounds,
                         cohort=cohort_size(cfg.clients.per_round, dataset.num_clients), eval_every=cfg.eval.every,
                         deadline_s=cfg.devices.deadline_s, use_availability=cfg.devices.use_availability,
                         clock=ClockPredictor(dataset, population, factory), overcommit=cfg.devices.overcommit)
        loop.run(state)
    finally:
        if exporter is not None:
            exporter.close()
        if backend is not None:
            backend.close()
    summary = summarize(round_log.rows, run_dir, algorithm.name, startup_s)
    write_summary(summary, run_dir)
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
