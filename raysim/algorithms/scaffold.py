"""SCAFFOLD (Karimireddy et al. 2020, option II): control variates correct client drift.

The server keeps its control variate c (a server-state group); every client keeps its
own c_i in the per-client store (the server state's `client/<id>/` groups, so
checkpoints and --resume carry them; a client starts at 0). A client runs K local SGD
steps on the loss plus <c - c_i, w>, whose gradient adds exactly SCAFFOLD's correction
c - c_i, then sets c_i+ = c_i - c + (x - y) / (K lr) and uploads the model change
y - x and its control change c_i+ - c_i (both billed). The server applies the mean
model change (server_lr, as FedAvg) and c += |S| / N * mean control change.

Memory: one model-sized float32 state per client that has ever trained, in the
driver (e.g. 1,000 clients x TwoCNN's 1.66 M parameters = 6.6 GB): SCAFFOLD's cost,
not the simulator's, so use it with populations whose states fit.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from raysim.algorithms.fedavg import FedAvg
from raysim.algorithms.server_update import is_trainable_state
from raysim.config import ConfigError
from raysim.costs.payload import decode
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate, RoundPlan, ServerState
from raysim.engine.stats import Partial, Tensors, WeightedSum

SERVER_CONTROL = "scaffold_c/"
CONTROL_CHANGE = "control_delta"


def client_group(client: int) -> str:
    return f"client/{client}/"


class Scaffold(FedAvg):
    name = "scaffold"

    def __init__(self, cfg, model_factory=None, example_input=None):
        super().__init__(cfg, model_factory, example_input)
        self.population = cfg.data.num_clients  # N in the control update; the loop tells the real one

    def setup_plan(self, state: ServerState, population: int) -> None:
        """No set-up phase; this is where the loop says how many clients there are."""
        self.population = population
        return None

    def init_state(self, weights: Tensors) -> ServerState:
        if self.cfg.clients.optimizer.name != "sgd" or self.cfg.clients.optimizer.momentum:
            raise ConfigError("scaffold's control-variate update assumes plain SGD clients: set "
                             "clients.optimizer.name=sgd and momentum=0")
        state = super().init_state(weights)
        return state.with_group(SERVER_CONTROL, {k: torch.zeros_like(v) for k, v in weights.items()
                                                 if is_trainable_state(v)})

    def configure_round(self, state: ServerState, round_idx: int, clients: list[int]) -> RoundPlan:
        plan = super().configure_round(state, round_idx, clients)
        server_c = state.group(SERVER_CONTROL)
        tasks = []
        for task in plan.tasks:
            own = state.group(client_group(task.client)) or {k: torch.zeros_like(v) for k, v in server_c.items()}
            tasks.append(replace(task, state={"c": server_c, "c_i": own}))
        plan.tasks = tasks
        return plan

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        c, c_i = task.state["c"], task.state["c_i"]
        correction = {k: (c[k] - c_i[k]).to(w.device) for k, w in broadcast.weights.items() if k in c}

        def drift(model: nn.Module) -> torch.Tensor:  # gradient: c - c_i, SCAFFOLD's correction
            return sum((p * correction[n]).sum() for n, p in model.named_parameters() if n in correction)

        update = self._train_and_upload(model, data, task, broadcast, extra_loss=drift)
        delta = update.contribution["delta"].mean()  # the decoded change, back from its weighted sum
        steps = task.epochs * math.ceil(len(data) / self.cfg.clients.batch_size)  # K: the optimizer steps taken
        new_c_i = {k: c_i[k] - c[k] - delta[k] / (steps * task.lr) for k in c}
        control_change = {k: new_c_i[k] - c_i[k] for k in c}
        sent_control = self.encode(control_change, {}, include_mask=False)
        # The control update is an unweighted mean over the round's clients.
        control = WeightedSum.of(decode(sent_control), 1.0)
        return replace(update, contribution=dict(update.contribution, **{CONTROL_CHANGE: control}),
                       upload_bytes=update.upload_bytes + len(sent_control), client_state=new_c_i)

    def aggregate(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        state, metrics = super().aggregate(state, plan, partial)
        if CONTROL_CHANGE in partial.stats:
            stat = partial.stats[CONTROL_CHANGE]
            share = stat.weight / self.population  # |S| / N
            server_c = {k: v + share * stat.mean()[k] for k, v in state.group(SERVER_CONTROL).items()}
            state = state.with_group(SERVER_CONTROL, server_c)
        for client, own in partial.client_states.items():
            state = state.with_group(client_group(client), own)
        return state, metrics
