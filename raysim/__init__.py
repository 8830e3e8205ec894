"""raysim: a Ray-based federated-learning cluster simulator."""
__version__ = "0.1.0"
