"""Models the simulator trains, and the names pruning must respect."""
from raysim.models.zoo import MODELS, build_model, output_layer_name, prunable_layer_names

__all__ = ["MODELS", "build_model", "output_layer_name", "prunable_layer_names"]
