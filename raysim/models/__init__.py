"""Models the simulator trains: the zoo and its registry."""
from raysim.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model"]
