"""Adaptive server optimizers (Reddi et al. 2021, "Adaptive Federated Optimization"):
the mean client change is a pseudo-gradient that the server feeds to Adam, Yogi or
Adagrad instead of adding it. Their moments live in the server state's buffers, so
checkpoints and --resume carry them.

    m_t = beta1 m_{t-1} + (1 - beta1) d_t
    v_t = beta2 v_{t-1} + (1 - beta2) d_t^2                  (FedAdam)
    v_t = v_{t-1} - (1 - beta2) d_t^2 sign(v_{t-1} - d_t^2)  (FedYogi)
    v_t = v_{t-1} + d_t^2                                    (FedAdagrad)
    w_t = w_{t-1} + eta m_t / (sqrt(v_t) + tau)

with v_0 = tau^2, as in the paper's experiments. eta is `algorithm.params.eta`, not
`algorithm.server_lr` (FedAvg's, default 1): an adaptive step of 1 per coordinate
would wreck any model, and server_momentum is FedAvg's too (beta1 plays its part).
"""
from __future__ import annotations

import torch
from pydantic import Field

from raysim.algorithms.fedavg import AlgorithmParams, FedAvg
from raysim.engine.api import RoundPlan, ServerState
from raysim.engine.stats import Partial

FIRST, SECOND = "fedopt_m/", "fedopt_v/"


class FedOpt(FedAvg):
    rule = "adam"

    class Params(AlgorithmParams):
        eta: float = Field(0.01, gt=0, description="server step size")
        beta1: float = Field(0.9, ge=0, lt=1)
        beta2: float = Field(0.99, ge=0, lt=1)
        tau: float = Field(1e-3, gt=0, description="adaptivity: larger is closer to FedAvg with momentum")

    def _second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        b2 = self.params.beta2
        if self.rule == "adam":
            return b2 * v + (1 - b2) * d2
        if self.rule == "yogi":
            return v - (1 - b2) * d2 * torch.sign(v - d2)
        return v + d2

    def aggregate(self, state: ServerState, plan: RoundPlan, partial: Partial) -> tuple[ServerState, dict[str, float]]:
        if "delta" not in partial.stats:  # every client failed or was dropped: keep the model
            return super().aggregate(state, plan, partial)
        p, eta = self.params, self.params.eta
        mean = partial.stats["delta"].mean()
        m, v = state.group(FIRST), state.group(SECOND)
        weights = dict(state.weights)
        for name, d in mean.items():
            m[name] = p.beta1 * m.get(name, torch.zeros_like(d)) + (1 - p.beta1) * d
            v[name] = self._second_moment(v.get(name, torch.full_like(d, p.tau**2)), d * d)
            weights[name] = state.weights[name] + eta * m[name] / (v[name].sqrt() + p.tau)
        state = ServerState(state.round + 1, weights, state.buffers, state.meta)
        state = state.with_group(FIRST, m).with_group(SECOND, v)
        return self.after_aggregate(state, partial)


class FedAdam(FedOpt):
    name, rule = "fedadam", "adam"


class FedYogi(FedOpt):
    name, rule = "fedyogi", "yogi"


class FedAdagrad(FedOpt):
    name, rule = "fedadagrad", "adagrad"
