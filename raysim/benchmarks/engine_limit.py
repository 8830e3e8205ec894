"""Benchmark E's compute limit: what the cores can do with no engine at all.

One forked process per core (so the dataset loaded here is shared, not copied), each with
one thread and one resident model and optimizer for the whole run. Per client a process
copies the global weights into its model, takes the SGD steps and copies the weighted delta
out; only that is timed, inside the process. A round's limit time is the largest busy time
of any process: the cores could not have finished the cohort sooner.
"""
from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from collections.abc import Callable

import numpy as np
import torch

from raysim.benchmarks.engine_loop import client_generator, client_tensors, sgd_steps
from raysim.config import ExperimentConfig


def _serve(conn, factory: Callable, dataset, cfg: ExperimentConfig, weights: dict, delta_sum: dict) -> None:
    """A limit process: per message (clients, round seed) train them into `delta_sum`, reply (busy s, rows)."""
    try:
        torch.set_num_threads(1)
        model = factory(None)
        resident = model.state_dict()  # views of the model's own tensors: copy_ writes the model
        opt = torch.optim.SGD(model.parameters(), lr=cfg.clients.optimizer.lr)
        while (message := conn.recv()) is not None:
            clients, round_seed = message
            for t in delta_sum.values():
                t.zero_()
            busy, rows = 0.0, 0
            for client in clients:
                x, y = client_tensors(dataset, client)
                gen = client_generator(round_seed, client)
                start = time.perf_counter()
                with torch.no_grad():
                    for k, t in resident.items():
                        t.copy_(weights[k])
                sgd_steps(model, opt, x, y, cfg.clients.local_epochs, cfg.clients.batch_size, gen)
                with torch.no_grad():
                    for k, t in resident.items():
                        delta_sum[k].add_((t - weights[k]).double(), alpha=len(y))
                busy += time.perf_counter() - start
                rows += len(y)
            conn.send(("ok", busy, rows))
    except Exception:  # the parent raises it: a limit that did not train must not read as fast
        conn.send(("error", traceback.format_exc(), 0))


class ComputeLimit:
    """The limit's processes, started once and reused round after round; use as a context manager."""

    def __init__(self, factory: Callable, dataset, cfg: ExperimentConfig, weights: dict, processes: int):
        # Shared memory, written here and read there: no weights travel through the pipes.
        self.weights = {k: v.detach().clone().share_memory_() for k, v in weights.items()}
        self.sums = [{k: torch.zeros_like(v, dtype=torch.float64).share_memory_() for k, v in weights.items()}
                     for _ in range(processes)]
        ctx = mp.get_context("fork")
        self.conns, self.procs = [], []
        for delta_sum in self.sums:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, factory, dataset, cfg, self.weights, delta_sum),
                               daemon=True, name="raysim-compute-limit")
            proc.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(proc)

    def round(self, weights: dict, clients: list[int], round_seed: int) -> tuple[dict, list[float]]:
        """The cohort split evenly across the processes; the new global weights and each process's busy s."""
        for k, t in self.weights.items():
            t.copy_(weights[k])
        for conn, share in zip(self.conns, np.array_split(np.asarray(clients, dtype=np.int64), len(self.conns))):
            conn.send((share.tolist(), round_seed))
        replies = [conn.recv() for conn in self.conns]
        for status, detail, _ in replies:
            if status != "ok":
                raise RuntimeError(f"a compute-limit process failed:\n{detail}")
        n_total = sum(rows for _, _, rows in replies)
        new = {k: weights[k] + (sum(s[k] for s in self.sums) / n_total).to(weights[k].dtype) for k in weights}
        return new, [busy for _, busy, _ in replies]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass  # already gone
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()

    def __enter__(self) -> ComputeLimit:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
