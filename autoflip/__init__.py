"""AutoFLIP: guidance from federated loss exploration and the hybrid pruning masks it drives."""
