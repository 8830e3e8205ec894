"""The round loop: plan, run the clients, aggregate, evaluate, tell the callbacks."""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from raysim.data.federated import FederatedDataset
from raysim.devices import Population
from raysim.engine.api import ClientTask, FederatedAlgorithm, ServerState
from raysim.engine.backend import Backend
from raysim.engine.clock import ClockPredictor
from raysim.engine.record import Evaluation, RoundRecord
from raysim.engine.runner import ModelFactory
from raysim.engine.sampling import sample_clients
from raysim.engine.seeds import rng_for
from raysim.engine.stats import Partial
from raysim.engine.training import evaluate


class Callback:
    """Side effects of a run (round log, checkpoints, progress, metrics); all hooks optional.

    `on_round_end` sees each round's typed record (`record.row()` is the row
    rounds.parquet gets), the server state after the round and the merged client sums;
    returning True stops the run after this round (every callback still sees it, then
    `on_run_end` runs as usual)."""

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> bool | None: ...

    def on_run_end(self, state: ServerState) -> None: ...


class Evaluator:
    """Global test set in the driver; clients' held-out data through the backend (a fixed
    seeded subset of clients, so the curve compares like with like across rounds)."""

    def __init__(self, dataset: FederatedDataset, model_factory: ModelFactory, algorithm: FederatedAlgorithm,
                 backend: Backend, *, seed: int, clients: bool, max_clients: int, batch_size: int):
        self.model_factory = model_factory
        self.algorithm = algorithm
        self.backend = backend
        self.batch_size = batch_size
        self.test_x = torch.from_numpy(dataset.test.x)
        self.test_y = torch.from_numpy(dataset.test.y)
        with_holdout = np.flatnonzero(dataset.holdout_counts > 0)
        pick = rng_for(seed, "eval").permutation(with_holdout)[:max_clients] if clients else []
        self.eval_clients = sorted(int(c) for c in pick)

    def __call__(self, state: ServerState) -> Evaluation:
        broadcast = self.algorithm.broadcast(state)
        model = self.model_factory(broadcast.arch)
        model.load_state_dict(broadcast.weights)
        loss_sum, correct, n = evaluate(model, self.test_x, self.test_y, self.batch_size)
        if not self.eval_clients:
            return Evaluation(correct / n, loss_sum / n)
        tasks = [ClientTask(state.round, c, 0, "evaluate") for c in self.eval_clients]
        c = self.backend.run(tasks, broadcast).evaluate
        return Evaluation(correct / n, loss_sum / n,
                          c.correct / c.examples if c.examples else math.nan,
                          c.loss_sum / c.examples if c.examples else math.nan)


@dataclass
class RoundLoop:
    algorithm: FederatedAlgorithm
    backend: Backend
    population: Population
    evaluator: Evaluator
    callbacks: Sequence[Callback]
    seed: int
    rounds: int
    cohort: int
    eval_every: int
    deadline_s: float | None
    use_availability: bool
    clock: ClockPredictor
    overcommit: float = 1.0

    def _notify(self, record: RoundRecord, state: ServerState, partial: Partial) -> bool:
        """Whether any callback asked to stop."""
        stops = [cb.on_round_end(record, state, partial) for cb in self.callbacks]
        return any(stop is True for stop in stops)

    def _setup(self, state: ServerState) -> ServerState:
        """An algorithm's one-off phase before round 1 (AutoFLIP's exploration), logged as round 0."""
        start = time.perf_counter()
        plan = self.algorithm.setup_plan(state, len(self.population))
        if plan is None:
            return state
        partial = self.backend.run(plan.tasks, plan.broadcast)
        state, metrics = self.algorithm.finish_setup(state, plan, partial)
        record = RoundRecord.of(0, "explore", len(plan.tasks), partial, None)
        record.wall_time_s = time.perf_counter() - start
        record.metrics = metrics
        record.evaluation = self.evaluator(state)
        self._notify(record, state, partial)
        return state

    def run(self, state: ServerState) -> ServerState:
        state = self._setup(state)
        for r in range(state.round, self.rounds):
            start = time.perf_counter()
            if self.use_availability:
                available = self.population.available(r, self.seed)
            else:
                available = np.ones(len(self.population), dtype=bool)
            clients = sample_clients(self.seed, r, math.ceil(self.cohort * self.overcommit), available)
            plan = self.algorithm.configure_round(state, r, clients)
            deadline = self.clock.round_deadline(plan.tasks, plan.broadcast, self.cohort, self.deadline_s)
            if any(t.deadline_s != deadline for t in plan.tasks):  # no second copy of every task when unchanged
                plan = replace(plan, tasks=[replace(t, deadline_s=deadline) for t in plan.tasks])
            partial = self.backend.run(plan.tasks, plan.broadcast)
            pool = self.backend.pool_info()
            state, metrics = self.algorithm.aggregate(state, plan, partial)
            record = RoundRecord.of(r + 1, "train", len(clients), partial, deadline)
            record.wall_time_s = time.perf_counter() - start
            record.pool = pool
            record.metrics = metrics
            if (r + 1) % self.eval_every == 0 or r + 1 == self.rounds:
                record.evaluation = self.evaluator(state)
            if self._notify(record, state, partial):
                break
        for cb in self.callbacks:
            cb.on_run_end(state)
        return state
