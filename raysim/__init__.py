"""raysim: a Ray-based federated-learning cluster simulator.

The Python API (imported on first use, so `import raysim` stays light):

- `raysim.run(config, *, model=None, dataset=None, partitioner=None, algorithm=None,
  callbacks=(), overrides=(), out=None)` -> RunResult(summary, run_dir)
- `raysim.load_config(path, overrides)` -> ExperimentConfig
- `raysim.Callback`: subclass it; `on_round_end(record, state, partial)` sees each round's
  `RoundRecord` (counters, `metrics`, `evaluation`); returning True stops the run
- the registries: `raysim.MODELS`, `DATASETS`, `PARTITIONERS`, `PROFILES`, `ALGORITHMS`
"""
__version__ = "0.1.0"

_EXPORTS = {
    "run": "raysim.api", "RunResult": "raysim.api",
    "load_config": "raysim.config", "ExperimentConfig": "raysim.config", "ConfigError": "raysim.config",
    "Callback": "raysim.engine.loop", "RoundRecord": "raysim.engine.record", "Evaluation": "raysim.engine.record",
    "ClientCounters": "raysim.engine.counters", "EvalCounters": "raysim.engine.counters",
    "MODELS": "raysim.catalog", "DATASETS": "raysim.data.loading", "PARTITIONERS": "raysim.data.loading",
    "PROFILES": "raysim.devices", "ALGORITHMS": "raysim.catalog",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raysim' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
