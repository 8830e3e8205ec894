"""Benchmark C's measurements: one (scenario, cohort) point per fresh driver process, so its
memory peak is its own; the parent only launches children and collects their JSON."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

from raysim.benchmarks.common import median, timed_rounds
from raysim.benchmarks.scale_plan import scenario_config


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


def _set_up(cfg):
    """The population's data (counts, test set), device profiles; their time and memory."""
    from raysim.data.loading import load_federated_dataset
    from raysim.devices import Population
    from raysim.engine.seeds import derive_seed

    start = time.perf_counter()
    with PeakRss() as mem:
        dataset = load_federated_dataset(cfg.data, cfg.seed)
        pop = Population.from_mix(dataset.num_clients, cfg.devices.mix, derive_seed(cfg.seed, "population"))
    return dataset, pop, {"setup_s": time.perf_counter() - start, "setup_rss_increase_bytes": mem.peak - mem.start}


def measure_setup_and_sampling(population: int, cohort: int, seed: int) -> dict:
    """The stretch point (runs in the child process): set up `population` clients, then draw one
    round's availability and sample `cohort` clients, as every round does; no training."""
    from raysim.engine.sampling import sample_clients

    cfg = scenario_config({"name": "logreg"}, population, cohort, seed)
    dataset, pop, setup = _set_up(cfg)
    start = time.perf_counter()
    with PeakRss() as mem:
        available = pop.available(0, cfg.seed)
        online = int(available.sum())
        clients = sample_clients(cfg.seed, 0, cohort, available)
    return {"population": dataset.num_clients, "cohort": cohort, "sampled": len(clients), "online": online, **setup,
            "sample_s": time.perf_counter() - start, "sample_rss_increase_bytes": mem.peak - mem.start,
            "driver_maxrss_process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure_point(model: dict, population: int, cohort: int, rounds: int, seed: int) -> dict:
    """One driver's measurements (runs in the child process)."""
    import torch

    from raysim.engine.sampling import sample_clients
    from raysim.experiment import backend_session, build_backend, build_runner

    cfg = scenario_config(model, population, cohort, seed)
    dataset, pop, setup = _set_up(cfg)
    runner = build_runner(cfg, pop, dataset)
    params = sum(p.numel() for p in runner.model_factory(None).parameters())
    available = np.ones(dataset.num_clients, dtype=bool)
    cohorts = [sample_clients(cfg.seed, r, cohort, available) for r in range(rounds + 1)]  # + warm-up
    with backend_session(cfg):  # how every run joins or starts Ray
        backend = build_backend(cfg, runner)
        backend.wait_ready()
        with PeakRss() as round_mem:
            times = timed_rounds(backend, runner, cohorts, vectorized=cfg.backend.vectorize)
        busy = backend.pool_info()["busy_fraction"]
        backend.close()
    measured = times[1:]
    return {
        "cohort": cohort, "population": dataset.num_clients, "train_rows": int(dataset.client_train_sizes().sum()),
        "model_params": params, "model_mb": params * 4 / 1e6, "vectorized": cfg.backend.vectorize, "torch_threads_driver": torch.get_num_threads(),
        **setup,
        "round_s": measured, "warmup_round_s": times[0], "round_s_median": median(measured),
        "updates_per_s": cohort / median(measured), "last_round_busy_fraction": busy,
        "driver_rss_before_rounds_bytes": round_mem.start, "driver_peak_rss_rounds_bytes": round_mem.peak,
        "driver_peak_rss_increase_rounds_bytes": round_mem.peak - round_mem.start,
        "driver_maxrss_process_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _in_child(spec: dict) -> dict:
    """Measure in a fresh interpreter so its memory peak is its own."""
    proc = subprocess.run([sys.executable, "-m", "raysim.benchmarks.scale_run", "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark C point ({spec}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_point(model: dict, population: int, cohort: int, rounds: int, seed: int) -> dict:
    return _in_child({"model": model, "population": population, "cohort": cohort, "rounds": rounds, "seed": seed})


def run_stretch(population: int, cohort: int, seed: int) -> dict:
    return _in_child({"stretch": True, "population": population, "cohort": cohort, "seed": seed})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        if spec.get("stretch"):
            out = measure_setup_and_sampling(spec["population"], spec["cohort"], spec["seed"])
        else:
            out = measure_point(spec["model"], spec["population"], spec["cohort"], spec["rounds"], spec["seed"])
        print(json.dumps(out))
    else:
        sys.exit("usage: raysim bench scale ... (this module's --child mode is internal)")
