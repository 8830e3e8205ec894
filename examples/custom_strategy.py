"""Bring your own strategy: FedAvg with each client's weight capped.

    python examples/custom_strategy.py
    python examples/custom_strategy.py backend.name=inprocess algorithm.params.cap=50

An algorithm plug-in is a FederatedAlgorithm (raysim/engine/api.py); subclassing FedAvg
keeps the masked upload, the tree-reduced sums and the server step. A client's
contribution is a set of named weighted sums, which workers pre-sum and a tree merges:
here each client's weight is min(samples, cap) instead of its sample count, so a few
large clients cannot dominate the mean. Its parameter is declared as a pydantic model
(`Params`, an AlgorithmParams), so `algorithm.params.cap` is validated like any config
field and reaches the algorithm as `self.params.cap`.
"""
from __future__ import annotations

import sys
from dataclasses import replace

from pydantic import Field

import raysim
from raysim.algorithms.fedavg import AlgorithmParams, FedAvg
from raysim.engine.stats import WeightedSum


class CappedFedAvg(FedAvg):
    name = "capped_fedavg"

    class Params(AlgorithmParams):  # validated from algorithm.params into self.params
        cap: int = Field(100, ge=1, description="the largest weight one client's update gets")

    def client_update(self, model, data, task, broadcast):
        update = super().client_update(model, data, task, broadcast)
        delta = update.contribution["delta"]
        weight = min(delta.weight, self.params.cap)
        capped = WeightedSum({k: v * (weight / delta.weight) for k, v in delta.total.items()}, weight)
        return replace(update, contribution=dict(update.contribution, delta=capped),
                       metrics={"capped_clients": float(weight < delta.weight)})

    def aggregate(self, state, plan, partial):
        state, metrics = super().aggregate(state, plan, partial)
        return state, metrics | {"capped_clients": partial.metrics.get("capped_clients", 0.0)}


CONFIG = {
    "name": "custom-strategy", "rounds": 10,
    "data": {"dataset": "synthetic", "num_clients": 50, "partition": {"scheme": "natural"}},
    "clients": {"per_round": 10},
    "algorithm": {"params": {"cap": 100}},
    "eval": {"every": 5, "clients": False},
}


def main(overrides: list[str]) -> raysim.RunResult:
    import custom_strategy  # this file under its own name, so config.yaml can name the class

    result = raysim.run(CONFIG, algorithm=custom_strategy.CappedFedAvg, overrides=overrides)
    print(f"final accuracy {result.summary['final_accuracy']:.4f}; run folder {result.run_dir}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
