"""The plain PyTorch client work that benchmark E's two references share (the floor loop and
the compute limit), so that both take the same SGD steps from the same seeds."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from raysim.engine.seeds import derive_seed


def client_generator(round_seed: int, client: int) -> torch.Generator:
    # One generator per client, not per round: a limit process sees only its share of the
    # cohort, yet must shuffle each client's rows as the floor does.
    return torch.Generator().manual_seed(derive_seed(round_seed, "client", client))


def client_tensors(dataset, client: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = dataset.client_train_rows(client)
    return torch.from_numpy(dataset.train.x[rows]), torch.from_numpy(dataset.train.y[rows])


def sgd_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              epochs: int, batch_size: int, gen: torch.Generator) -> None:
    """The client's local epochs of minibatch SGD, rows reshuffled each epoch."""
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
