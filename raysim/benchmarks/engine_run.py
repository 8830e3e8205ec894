"""Benchmark E's timings: the floor loop, the compute limit, the in-process backend and the Ray
backend, each over the same seeded cohorts (warm-up round first)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from raysim.benchmarks.common import cores, timed_rounds
from raysim.benchmarks.engine_limit import ComputeLimit
from raysim.benchmarks.engine_loop import client_generator, client_tensors, sgd_steps
from raysim.benchmarks.engine_plan import WORKLOADS, vectorized_config, workload_config
from raysim.config import ExperimentConfig
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
from raysim.engine.backend import InProcessBackend, worker_threads
from raysim.engine.sampling import sample_clients
from raysim.engine.seeds import derive_seed
from raysim.experiment import backend_session, build_backend, build_runner, model_factory


def floor_round(model: torch.nn.Module, weights: dict, dataset, clients: list[int], cfg: ExperimentConfig,
                seed: int) -> dict:
    """One FedAvg round as a plain loop would write it (a fresh optimizer per client);
    returns the new global weights."""
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in weights.items()}
    n_total = 0
    for client in clients:
        x, y = client_tensors(dataset, client)
        model.load_state_dict(weights)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.clients.optimizer.lr)
        sgd_steps(model, opt, x, y, cfg.clients.local_epochs, cfg.clients.batch_size, client_generator(seed, client))
        trained = model.state_dict()
        for k in total:
            total[k] += (trained[k] - weights[k]).double() * len(y)
        n_total += len(y)
    return {k: weights[k] + (total[k] / n_total).to(weights[k].dtype) for k in weights}


def time_floor(cfg: ExperimentConfig, dataset, factory, rounds: list[list[int]]) -> list[float]:
    model = factory(None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    times = []
    for r, clients in enumerate(rounds):
        start = time.perf_counter()
        weights = floor_round(model, weights, dataset, clients, cfg, derive_seed(cfg.seed, "client", r))
        times.append(time.perf_counter() - start)
    return times


def time_limit(cfg: ExperimentConfig, dataset, factory, rounds: list[list[int]], processes: int) -> list[list[float]]:
    """Each round's busy seconds per limit process (engine_limit.py); the round's time is their maximum."""
    model = factory(None)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    busy = []
    with ComputeLimit(factory, dataset, cfg, weights, processes) as limit:
        for r, clients in enumerate(rounds):
            weights, per_process = limit.round(weights, clients, derive_seed(cfg.seed, "client", r))
            busy.append(per_process)
    return busy


def time_workload(name: str, rounds: int, seed: int, data_path: Path | None, say=print) -> dict:
    """Seconds per round of every way, warm-up first, and what they ran on."""
    cfg = workload_config(name, seed, data_path)
    dataset = load_federated_dataset(cfg.data, cfg.seed)
    population = Population.from_mix(dataset.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
    factory = model_factory(cfg, dataset.input_shape, dataset.num_classes, torch.tensor(dataset.train.x[:1]))
    cohort = int(cfg.clients.per_round)
    available = np.ones(dataset.num_clients, dtype=bool)
    plan = [sample_clients(cfg.seed, r, cohort, available) for r in range(rounds + 1)]  # + warm-up

    say(f"{name}: {WORKLOADS[name][0]}")
    times = {"floor": time_floor(cfg, dataset, factory, plan)}
    limit_busy = time_limit(cfg, dataset, factory, plan, cores())
    times["limit"] = [max(per_process) for per_process in limit_busy]
    runner = build_runner(cfg, population, dataset)
    times["inprocess"] = timed_rounds(InProcessBackend(runner, worker_threads(cfg.backend)), runner, plan)
    startup = {}
    with backend_session(cfg):  # how every run joins or starts Ray
        for way, ray_cfg in (("ray", cfg), ("ray_vectorized", vectorized_config(cfg))):
            start = time.perf_counter()
            backend = build_backend(ray_cfg, build_runner(ray_cfg, population, dataset))
            backend.wait_ready()
            startup[way] = time.perf_counter() - start
            try:
                times[way] = timed_rounds(backend, runner, plan, vectorized=way == "ray_vectorized")
            finally:
                backend.close()
    return {"workload": name, "config": cfg.model_dump(mode="json"), "clients_per_round": cohort,
            "times": times, "ray_workers": cfg.backend.num_workers, "ray_startup_s": startup["ray"],
            "ray_vectorized_startup_s": startup["ray_vectorized"],
            "floor_torch_threads": torch.get_num_threads(),
            "limit_processes": cores(), "limit_busy_s": limit_busy}
