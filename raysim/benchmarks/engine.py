"""Benchmark E: the engine against the compute floor.

The same client work three ways, round after round on the same sampled clients:
- floor: a plain sequential PyTorch loop in this process (load the global weights,
  SGD over the client's rows, add its weighted delta, average), torch's default threads;
- inprocess: the in-process backend (FedAvg, real payload encoding, FLOP and clock
  accounting, failure checks), one thread like a worker;
- ray: the Ray backend with one worker per core, tree-merged.
Round time covers client work and aggregation; the first round of each way is a
warm-up and is not counted (model build, worker start, FLOP profiling).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from raysim.benchmarks.common import bar_plot, cores, median, prepare_out, timed_rounds, write_result
from raysim.config import ConfigError, ExperimentConfig, config_from_dict
from raysim.data.loading import load_federated_dataset
from raysim.devices import Population
from raysim.engine.backend import InProcessBackend, worker_threads
from raysim.engine.sampling import sample_clients
from raysim.engine.seeds import derive_seed
from raysim.experiment import backend_session, build_backend, build_runner, model_factory

# name -> (what it stresses, config overrides); benchmarks.md's E1 and E2.
WORKLOADS = {
    "E1": ("overhead-bound: logistic regression, 1,000 clients (60 images each), 100 per round, 1 epoch",
           {"model": {"name": "logreg"}, "data": {"num_clients": 1000}, "clients": {"per_round": 100}}),
    "E2": ("compute-bound: TwoCNN (1.66 M parameters), 1,000 clients with 50 images each, 50 per round, batch 10",
           {"model": {"name": "twocnn"}, "data": {"num_clients": 1000, "max_train_samples": 50_000},
            "clients": {"per_round": 50}}),
}
TARGETS = {"E1": 1.5, "E2": 1.0}  # Ray round time / floor round time, at most
WAYS = ("floor", "inprocess", "ray")


def workload_config(name: str, seed: int, data_path: Path | None) -> ExperimentConfig:
    tree = {
        "name": f"bench-engine-{name}", "seed": seed, "rounds": 1,
        "data": {"dataset": "fashion_mnist", "path": str(data_path) if data_path else None,
                 "partition": {"scheme": "iid"}, "holdout_fraction": 0.0},
        "clients": {"local_epochs": 1, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
        "algorithm": {"name": "fedavg"},
        "devices": {"use_availability": False},
        "eval": {"clients": False},
        "backend": {"name": "ray", "num_workers": cores(), "num_cpus_per_worker": 1},
    }
    for key, value in WORKLOADS[name][1].items():
        tree[key] = tree.get(key, {}) | value
    return config_from_dict(tree, source=f"benchmark {name}")


def floor_round(model: torch.nn.Module, weights: dict, dataset, clients: list[int], cfg: ExperimentConfig,
                seed: int) -> dict:
    """One FedAvg round as a plain loop would write it; returns the new global weights."""
    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in weights.items()}
    n_total = 0
    gen = torch.Generator().manual_seed(seed)
    for client in clients:
        rows = dataset.client_train_rows(client)
        x, y = torch.from_numpy(dataset.train.x[rows]), torch.from_numpy(dataset.train.y[rows])
        model.load_state_dict(weights)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.clients.optimizer.lr)
        model.train()
        for _ in range(cfg.clients.local_epochs):
            order = torch.randperm(len(y), generator=gen)
            for start in range(0, len(y), cfg.clients.batch_size):
                idx = order[start:start + cfg.clients.batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
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


def run_workload(name: str, rounds: int, seed: int, data_path: Path | None, console: Console) -> dict:
    cfg = workload_config(name, seed, data_path)
    dataset = load_federated_dataset(cfg.data, cfg.seed)
    population = Population.from_mix(dataset.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
    example = torch.tensor(dataset.train.x[:1])
    factory = model_factory(cfg, dataset.input_shape, dataset.num_classes, example)
    cohort = int(cfg.clients.per_round)
    available = torch.ones(dataset.num_clients, dtype=torch.bool).numpy()
    plan = [sample_clients(cfg.seed, r, cohort, available) for r in range(rounds + 1)]  # + warm-up
    times: dict[str, list[float]] = {}

    console.print(f"[bold]{name}[/]: {WORKLOADS[name][0]}")
    times["floor"] = time_floor(cfg, dataset, factory, plan)
    runner = build_runner(cfg, population, dataset)
    times["inprocess"] = timed_rounds(InProcessBackend(runner, worker_threads(cfg.backend)), runner, plan)
    with backend_session(cfg):  # how every run joins or starts Ray
        start = time.perf_counter()
        backend = build_backend(cfg, runner)
        backend.worker_info()  # wait until every worker is up
        startup = time.perf_counter() - start
        try:
            times["ray"] = timed_rounds(backend, runner, plan)
        finally:
            backend.close()

    floor = median(times["floor"][1:])
    ways = {}
    for way in WAYS:
        measured = times[way][1:]
        ways[way] = {"round_s_median": median(measured), "round_s": measured, "warmup_round_s": times[way][0],
                     "updates_per_s": cohort / median(measured), "ratio_to_floor": median(measured) / floor}
    ratio = ways["ray"]["ratio_to_floor"]
    return {
        "workload": name, "description": WORKLOADS[name][0], "config": cfg.model_dump(mode="json"),
        "clients_per_round": cohort, "measured_rounds": rounds, "ways": ways,
        "ray_workers": cfg.backend.num_workers, "ray_startup_s": startup, "floor_torch_threads": torch.get_num_threads(),
        "target_ray_ratio_at_most": TARGETS[name], "target_met": ratio <= TARGETS[name],
    }


HOW_MEASURED = {
    "round_s": "time.perf_counter around configure/run/aggregate (backends) or the plain loop plus averaging (floor), "
               "per round, on this machine; the first round of each way is a warm-up, excluded",
    "round_s_median": "median over the measured rounds",
    "updates_per_s": "clients per round / median round time",
    "ratio_to_floor": "median round time of the way / median round time of the floor, measured in the same command",
    "ray_startup_s": "RayBackend construction until every worker answered (not in any round time)",
    "same_work": "the same sampled clients per round (seeded), data, batch size, epochs and optimizer in every way",
}


def markdown(result: dict) -> str:
    lines = [
        "# Benchmark E: engine efficiency against the compute floor", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['cores']} cores; Ray backend with {result['cores']} workers of 1 CPU each; "
        f"floor with torch's default {result['workloads'][0]['floor_torch_threads']} threads.", "",
        "| workload | way | median round (s) | client updates/s | ratio to floor | target |",
        "|---|---|---|---|---|---|",
    ]
    for w in result["workloads"]:
        for way in WAYS:
            m = w["ways"][way]
            target = ""
            if way == "ray":
                target = f"<= {w['target_ray_ratio_at_most']:.1f}x: {'met' if w['target_met'] else 'NOT met'}"
            lines.append(f"| {w['workload']} | {way} | {m['round_s_median']:.3f} | {m['updates_per_s']:.1f} | "
                         f"{m['ratio_to_floor']:.2f}x | {target} |")
    lines += ["", "How measured:"] + [f"- {k}: {v}" for k, v in result["how_measured"].items()]
    return "\n".join(lines) + "\n"


def run_engine(out: Path, workloads: list[str], rounds: int, seed: int, data_path: Path | None) -> dict:
    if rounds < 1:
        raise ConfigError("--rounds must be at least 1 (plus one warm-up round)")
    prepare_out(out)
    console = Console()
    results = [run_workload(name, rounds, seed, data_path, console) for name in workloads]
    command = (f"raysim bench engine --workloads {' '.join(workloads)} --rounds {rounds} --seed {seed} --out {out}"
               + (f" --data {data_path}" if data_path else ""))
    result = {"benchmark": "E: engine efficiency", "command": command, "cores": cores(),
              "workloads": results, "how_measured": HOW_MEASURED}
    write_result(out, "engine", result, markdown(result))
    labels = [f"{w['workload']} {way}" for w in results for way in WAYS]
    bar_plot(labels, [w["ways"][way]["updates_per_s"] for w in results for way in WAYS],
             "client updates per second", "Benchmark E (median over measured rounds)", out / "engine.png")
    table = Table(title=f"Benchmark E ({cores()} cores) -> {out}")
    for col in ("workload", "way", "median round s", "updates/s", "ratio to floor"):
        table.add_column(col, justify="right")
    for w in results:
        for way in WAYS:
            m = w["ways"][way]
            table.add_row(w["workload"], way, f"{m['round_s_median']:.3f}", f"{m['updates_per_s']:.1f}",
                          f"{m['ratio_to_floor']:.2f}x")
    console.print(table)
    for w in results:  # the headline ratios, last
        verdict = "met" if w["target_met"] else "NOT met"
        console.print(f"{w['workload']}: Ray backend round time = {w['ways']['ray']['ratio_to_floor']:.2f}x the "
                      f"sequential floor (target <= {w['target_ray_ratio_at_most']:.1f}x: {verdict}); "
                      f"{w['ways']['ray']['updates_per_s']:.1f} vs {w['ways']['floor']['updates_per_s']:.1f} updates/s")
    return result


def add_engine_parser(which: argparse._SubParsersAction) -> None:
    e = which.add_parser("engine", help="benchmark E: floor loop vs in-process vs Ray backend on Fashion-MNIST")
    e.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=sorted(WORKLOADS))
    e.add_argument("--rounds", type=int, default=3, help="measured rounds per way, after one warm-up (default 3)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data", type=Path, help="Fashion-MNIST folder (default: the Debian package's)")
    e.add_argument("--out", type=Path, help="output folder, new or empty (default: results/engine-<timestamp>)")


def engine_main(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"engine-{time.strftime('%Y%m%d-%H%M%S')}"
    run_engine(out, args.workloads, args.rounds, args.seed, args.data)
    return 0

