"""The Python entry point: `raysim.run(config, model=..., dataset=..., algorithm=...)`.

Objects are turned into import paths (`module:qualname`) before the config is
validated, so the run folder's config.yaml names them and `--resume`, Ray workers and a
later reader all find the same code. That is also why a lambda or a class defined
inside a function cannot be passed: nothing could import it again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysim.config import ConfigError, ExperimentConfig, config_from_dict, load_config, parse_overrides, set_path
from raysim.engine.loop import Callback
from raysim.registry import import_object

# keyword of run() -> the config field the object goes to
PLUGIN_FIELDS = {"model": "model.name", "dataset": "data.dataset", "partitioner": "data.partition.scheme",
                 "algorithm": "algorithm.name"}


@dataclass(frozen=True)
class RunResult:
    summary: dict  # what summary.json holds
    run_dir: Path


def import_path_of(obj: Any, what: str) -> str:
    """`module:qualname` of a module-level class or function, checked by importing it back."""
    if isinstance(obj, str):
        return obj
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    path = f"{module}:{qualname}"
    ok = module not in (None, "__main__") and qualname and "<" not in qualname
    try:
        ok = ok and import_object(path) is obj
    except LookupError:
        ok = False
    if not ok:
        raise ConfigError(f"{what}={obj!r}: pass a class or function defined at the top level of an importable "
                          "module (not __main__, a lambda or a local), or its import path 'package.module:attribute'")
    return path


def _tree(config: ExperimentConfig | dict | str | Path | None) -> dict:
    if isinstance(config, ExperimentConfig):
        return config.model_dump(mode="json")
    if isinstance(config, dict):
        return dict(config)
    return load_config(None if config is None else Path(config)).model_dump(mode="json")


def run(config: ExperimentConfig | dict | str | Path | None = None, *, model: Any = None, dataset: Any = None,
        partitioner: Any = None, algorithm: Any = None, callbacks: Sequence[Callback] = (),
        overrides: Sequence[str] = (), out: str | Path | None = None, progress: bool = False) -> RunResult:
    """Run one experiment and return its summary and run folder.

    `config`: a path to YAML, a dict of fields, an ExperimentConfig, or None for the
    embedded default. `model`, `dataset`, `partitioner`, `algorithm`: a registered name,
    an import path, or the class/function itself (see raysim.registry for each contract).
    `overrides`: `key=value` strings, as `--set` takes. `callbacks`: raysim.Callback
    objects; one whose on_round_end returns True stops the run after that round."""
    from raysim.experiment import execute, new_run

    tree = _tree(config)
    for key, value in parse_overrides(list(overrides)):
        set_path(tree, key, value)
    for keyword, obj in (("model", model), ("dataset", dataset), ("partitioner", partitioner),
                         ("algorithm", algorithm)):
        if obj is not None:
            set_path(tree, PLUGIN_FIELDS[keyword], import_path_of(obj, keyword))
    cfg = config_from_dict(tree, source="raysim.run")
    run_dir = new_run(cfg, Path(out) if out is not None else None)
    # A library call prints nothing unless asked to (progress=True: a bar, or lines off a terminal).
    return RunResult(execute(cfg, run_dir, progress=progress, quiet=not progress, callbacks=callbacks), run_dir)
