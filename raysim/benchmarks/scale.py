"""Benchmark C: scale. Round time and the driver's peak memory as the cohort grows.

Population: 100,000 LEAF-Synthetic clients (about 10 training rows each). Scenarios:
- logreg at 1,000 and 10,000 clients per round (the 60 s round target);
- a 6.6 MB MLP (1.65 M parameters) at 250 / 1,000 / 2,000 clients per round.
Every (scenario, cohort) point runs in a fresh driver process with its own local Ray,
so each peak is that cohort's alone: the parent only launches children and reports.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from raysim.benchmarks.common import bar_plot, cores, median, prepare_out, timed_rounds, write_result
from raysim.config import ConfigError, ExperimentConfig, config_from_dict

POPULATION = 100_000
SCENARIOS = {
    "logreg": ({"name": "logreg"}, (1_000, 10_000)),
    "mlp-6.6MB": ({"name": "mlp", "hidden": 1250, "layers": 2}, (250, 1_000, 2_000)),
}
ROUND_TARGET_S = 60.0  # a 10,000-client round
MEMORY_GROWTH_TARGET = 0.20  # driver peak, smallest to largest cohort
SETUP_TARGET_S, SETUP_TARGET_BYTES = 10.0, 2**30


def scenario_config(model: dict, population: int, cohort: int, seed: int) -> ExperimentConfig:
    return config_from_dict({
        "name": "bench-scale", "seed": seed, "rounds": 1,
        "data": {"dataset": "synthetic", "num_clients": population, "partition": {"scheme": "natural"},
                 "holdout_fraction": 0.0,
                 "synthetic": {"mean_samples": 1.0, "min_samples": 10, "max_samples": 40}},
        "model": model,
        "clients": {"per_round": cohort, "local_epochs": 1, "batch_size": 10, "optimizer": {"name": "sgd", "lr": 0.05}},
        "algorithm": {"name": "fedavg"},
        "devices": {"use_availability": False},
        "eval": {"clients": False},
        "backend": {"name": "ray", "num_workers": cores(), "num_cpus_per_worker": 1},
    }, source="benchmark C")


class PeakRss:
    """This process's resident memory, sampled every few milliseconds between start and stop."""

    def __init__(self, interval_s: float = 0.005):
        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakRss":
        self.start = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure_point(model: dict, population: int, cohort: int, rounds: int, seed: int) -> dict:
    """One driver's measurements (runs in the child process)."""
    import torch

    from raysim.data.loading import load_federated_dataset
    from raysim.devices import Population
    from raysim.engine.sampling import sample_clients
    from raysim.engine.seeds import derive_seed
    from raysim.experiment import backend_session, build_backend, build_runner

    cfg = scenario_config(model, population, cohort, seed)
    start = time.perf_counter()
    with PeakRss() as setup_mem:
        dataset = load_federated_dataset(cfg.data, cfg.seed)
        pop = Population.from_mix(dataset.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
    setup_s = time.perf_counter() - start
    runner = build_runner(cfg, pop, dataset)
    params = sum(p.numel() for p in runner.model_factory(None).parameters())
    available = np.ones(dataset.num_clients, dtype=bool)
    cohorts = [sample_clients(cfg.seed, r, cohort, available) for r in range(rounds + 1)]  # + warm-up
    with backend_session(cfg):  # how every run joins or starts Ray
        backend = build_backend(cfg, runner)
        backend.worker_info()
        with PeakRss() as round_mem:
            times = timed_rounds(backend, runner, cohorts)
        busy = backend.pool_info()["busy_fraction"]
        backend.close()
    return {
        "cohort": cohort, "population": dataset.num_clients, "train_rows": len(dataset.train),
        "model_params": params, "model_mb": params * 4 / 1e6, "torch_threads_driver": torch.get_num_threads(),
        "setup_s": setup_s, "setup_rss_increase_bytes": setup_mem.peak - setup_mem.start,
        "round_s": times[1:], "warmup_round_s": times[0], "round_s_median": median(times[1:]),
        "updates_per_s": cohort / median(times[1:]), "last_round_busy_fraction": busy,
        "driver_rss_before_rounds_bytes": round_mem.start, "driver_peak_rss_rounds_bytes": round_mem.peak,
        "driver_peak_rss_increase_rounds_bytes": round_mem.peak - round_mem.start,
        "driver_maxrss_process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_point(model: dict, population: int, cohort: int, rounds: int, seed: int) -> dict:
    """Measure one point in a fresh interpreter so its memory peak is its own."""
    spec = json.dumps({"model": model, "population": population, "cohort": cohort, "rounds": rounds, "seed": seed})
    proc = subprocess.run([sys.executable, "-m", "raysim.benchmarks.scale", "--child", spec],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark C point (cohort {cohort}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _growth(points: list[dict], key: str) -> float:
    return points[-1][key] / points[0][key] - 1.0


HOW_MEASURED = {
    "round_s": "time.perf_counter around configure/run/aggregate of a FedAvg round on the Ray backend (one worker "
               "per core), after one warm-up round; the median over measured rounds is reported",
    "driver_peak_rss_rounds_bytes": "peak resident memory of the driver process (psutil, sampled every 5 ms) while "
                                    "the rounds ran; each cohort in a fresh driver process",
    "driver_peak_growth": "peak at the largest cohort / peak at the smallest cohort - 1 (the target is on this)",
    "driver_peak_rss_increase_rounds_bytes": "the same peak minus the driver's memory when the rounds began",
    "setup_s": "time.perf_counter around generating the population's data, partition and device profiles",
    "setup_rss_increase_bytes": "peak resident memory during set-up minus before it (sampled)",
}


def _mb(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def markdown(result: dict) -> str:
    lines = [
        "# Benchmark C: scale", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['cores']} cores; Ray backend with {result['cores']} workers of 1 CPU; population "
        f"{result['population']:,} clients.", "",
        "| scenario | clients/round | median round (s) | updates/s | driver peak RSS (rounds) | increase during rounds |"
        " set-up (s) | set-up memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["scenarios"].items():
        for p in s["points"]:
            lines.append(f"| {name} ({p['model_mb']:.2f} MB model) | {p['cohort']:,} | {p['round_s_median']:.2f} | "
                         f"{p['updates_per_s']:.0f} | {_mb(p['driver_peak_rss_rounds_bytes'])} | "
                         f"{_mb(p['driver_peak_rss_increase_rounds_bytes'])} | {p['setup_s']:.1f} | "
                         f"{_mb(p['setup_rss_increase_bytes'])} |")
    lines += ["", "Targets:"] + [f"- {t['name']}: {t['value']} ({'met' if t['met'] else 'NOT met'})"
                                 for t in result["targets"]]
    lines += ["", "How measured:"] + [f"- {k}: {v}" for k, v in result["how_measured"].items()]
    return "\n".join(lines) + "\n"


def targets(scenarios: dict) -> list[dict]:
    out = []
    for name, s in scenarios.items():
        points = s["points"]
        growth = _growth(points, "driver_peak_rss_rounds_bytes")
        out.append({"name": f"{name}: driver peak memory growth {points[0]['cohort']:,} -> {points[-1]['cohort']:,} "
                            f"clients/round <= {MEMORY_GROWTH_TARGET:.0%}",
                    "value": f"{growth:+.1%}", "met": growth <= MEMORY_GROWTH_TARGET})
        big = [p for p in points if p["cohort"] >= 10_000]
        if name == "logreg" and big:
            out.append({"name": f"logreg: a {big[-1]['cohort']:,}-client round <= {ROUND_TARGET_S:.0f} s",
                        "value": f"{big[-1]['round_s_median']:.1f} s", "met": big[-1]["round_s_median"] <= ROUND_TARGET_S})
        setup = max(points, key=lambda p: p["setup_s"])
        out.append({"name": f"{name}: population set-up <= {SETUP_TARGET_S:.0f} s and <= 1 GiB",
                    "value": f"{setup['setup_s']:.1f} s, {_mb(max(p['setup_rss_increase_bytes'] for p in points))}",
                    "met": setup["setup_s"] <= SETUP_TARGET_S
                    and max(p["setup_rss_increase_bytes"] for p in points) <= SETUP_TARGET_BYTES})
    return out


def run_scale(out: Path, scenarios: list[str], population: int, rounds: int, seed: int) -> dict:
    if rounds < 1 or population < max(max(SCENARIOS[s][1]) for s in scenarios):
        raise ConfigError("benchmark C needs --rounds >= 1 and a population at least as large as the biggest cohort")
    prepare_out(out)
    console = Console()
    results = {}
    for name in scenarios:
        model, cohorts = SCENARIOS[name]
        points = []
        for cohort in cohorts:
            console.print(f"C {name}: {cohort:,} clients per round of {population:,} ...")
            points.append(run_point(model, population, cohort, rounds, seed))
            p = points[-1]
            console.print(f"  round {p['round_s_median']:.2f} s, driver peak {_mb(p['driver_peak_rss_rounds_bytes'])}")
        results[name] = {"model": model, "points": points}
    command = f"raysim bench scale --scenarios {' '.join(scenarios)} --population {population} --rounds {rounds} " \
              f"--seed {seed} --out {out}"
    result = {"benchmark": "C: scale", "command": command, "cores": cores(), "population": population,
              "scenarios": results, "targets": targets(results), "how_measured": HOW_MEASURED}
    write_result(out, "scale", result, markdown(result))
    labels = [f"{n} {p['cohort']:,}" for n, s in results.items() for p in s["points"]]
    bar_plot(labels, [p["driver_peak_rss_rounds_bytes"] / 2**20 for s in results.values() for p in s["points"]],
             "driver peak RSS during rounds (MiB)", "Benchmark C: driver memory by cohort", out / "scale_memory.png")
    table = Table(title=f"Benchmark C ({cores()} cores, population {population:,}) -> {out}")
    for col in ("scenario", "clients/round", "median round s", "updates/s", "driver peak", "increase"):
        table.add_column(col, justify="right")
    for name, s in results.items():
        for p in s["points"]:
            table.add_row(name, f"{p['cohort']:,}", f"{p['round_s_median']:.2f}", f"{p['updates_per_s']:.0f}",
                          _mb(p["driver_peak_rss_rounds_bytes"]), _mb(p["driver_peak_rss_increase_rounds_bytes"]))
    console.print(table)
    for t in result["targets"]:  # the headline, last
        console.print(f"{t['name']}: {t['value']} ({'met' if t['met'] else 'NOT met'})")
    return result


def add_scale_parser(which: argparse._SubParsersAction) -> None:
    c = which.add_parser("scale", help="benchmark C: round time and driver memory up to 10,000 clients per round")
    c.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    c.add_argument("--population", type=int, default=POPULATION)
    c.add_argument("--rounds", type=int, default=2, help="measured rounds per point, after one warm-up (default 2)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", type=Path, help="output folder, new or empty (default: results/scale-<timestamp>)")


def scale_main(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / f"scale-{time.strftime('%Y%m%d-%H%M%S')}"
    run_scale(out, args.scenarios, args.population, args.rounds, args.seed)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps(measure_point(spec["model"], spec["population"], spec["cohort"], spec["rounds"], spec["seed"])))
    else:
        sys.exit("usage: raysim bench scale ... (this module's --child mode is internal)")
