"""FedProx (Li et al. 2020): FedAvg whose clients add a proximal term
(mu / 2) * ||w - w_global||^2 to their loss, which keeps heterogeneous clients near the
global model. mu = 0 is FedAvg exactly: no term is added at all."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from raysim.algorithms.fedavg import AlgorithmParams, FedAvg
from raysim.algorithms.server_update import is_trainable_state
from raysim.engine.api import Broadcast, ClientData, ClientTask, ClientUpdate


class FedProx(FedAvg):
    name = "fedprox"

    class Params(AlgorithmParams):
        mu: float = Field(0.01, ge=0, description="weight of the proximal term")

    def client_update(self, model: nn.Module, data: ClientData, task: ClientTask, broadcast: Broadcast) -> ClientUpdate:
        proximal = self._proximal(broadcast) if self.params.mu > 0 else None
        return self._train_and_upload(model, data, task, broadcast, proximal)

    def _proximal(self, broadcast: Broadcast):
        anchor = {k: w.detach() for k, w in broadcast.weights.items() if is_trainable_state(w)}

        def term(model: nn.Module) -> torch.Tensor:
            params = [(p, anchor[n]) for n, p in model.named_parameters() if n in anchor]
            return self.params.mu / 2 * sum(((p - w) ** 2).sum() for p, w in params)

        return term
