"""Experiment tracking through the callback API, each tracker writing under the run folder and
importing its package only when the config turns it on (`tracking:`, raysim/config.py, which
also refuses a tracker whose pip extra is not installed).

Both log every numeric column of rounds.parquet at step = round (0 = AutoFLIP's
exploration), so what they show is what the round log holds; a round not evaluated has no
accuracy point (null in the log)."""
from __future__ import annotations

import time
from pathlib import Path

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial

TENSORBOARD_DIR = "tensorboard"
MLFLOW_DIR = "mlflow"


def round_metrics(row: dict) -> dict[str, float]:
    """A round-log row's numeric values by column, the step (round) and nulls left out."""
    return {k: float(v) for k, v in row.items()
            if k != "round" and isinstance(v, int | float) and not isinstance(v, bool)}


class TensorBoardTracker(Callback):
    """Scalars in event files under `<run>/tensorboard`, one tag per round-log column."""

    def __init__(self, run_dir: Path, rows: list[dict]):
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run hides every earlier event (purge_step=0) and logs the kept rounds again:
        # rounds a crash made the run repeat then show once, with the values the log kept.
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=0 if rows else None)
        for row in rows:
            self._log(row)

    def _log(self, row: dict) -> None:
        for key, value in round_metrics(row).items():
            self.writer.add_scalar(key, value, row["round"])

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        self._log(record.row())
        self.writer.flush()  # readable while the run goes on

    def on_run_end(self, state: ServerState) -> None:
        self.writer.close()


class MlflowTracker(Callback):
    """An MLflow run in a SQLite store at `<run>/mlflow/mlflow.db` (MLflow 3 refuses its old
    plain-file store unless told to), experiment = the config's name, the config flattened
    into params; a resumed run continues the same MLflow run."""

    def __init__(self, cfg, run_dir: Path, rows: list[dict]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        folder = run_dir / MLFLOW_DIR
        folder.mkdir(exist_ok=True)
        self.client = MlflowClient(tracking_uri=store_uri(run_dir))
        experiment = self.client.get_experiment_by_name(cfg.name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            cfg.name, artifact_location=(folder / "artifacts").resolve().as_uri())
        existing = self.client.search_runs([experiment_id], max_results=1)  # the store is this run folder's
        if existing:
            self.run_id = existing[0].info.run_id
            self.logged = {(key, m.step) for key in existing[0].data.metrics
                           for m in self.client.get_metric_history(self.run_id, key)}
        else:
            run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                         tags={"raysim.run_dir": str(run_dir), "raysim.algorithm": cfg.algorithm.name})
            self.run_id, self.logged = run.info.run_id, set()
            params = [Param(k, str(v)) for k, v in flat(cfg.model_dump(mode="json")).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        for row in rows:  # rounds of a resumed run that the store does not hold yet
            self._log(row)

    def _log(self, row: dict) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, row["round"]) for k, v in round_metrics(row).items()
                   if (k, row["round"]) not in self.logged]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
            self.logged |= {(m.key, m.step) for m in metrics}

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        self._log(record.row())

    def on_run_end(self, state: ServerState) -> None:
        self.client.set_terminated(self.run_id, "FINISHED")


def store_uri(run_dir: Path) -> str:
    """The MLflow tracking URI of a run folder's store (for MlflowClient or `mlflow ui --backend-store-uri`)."""
    return f"sqlite:///{(run_dir / MLFLOW_DIR / 'mlflow.db').resolve()}"


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def trackers(cfg, run_dir: Path, rows: list[dict]) -> list[Callback]:
    """The trackers `cfg.tracking` turns on; `rows`: the rounds a resumed run already has."""
    out: list[Callback] = []
    if cfg.tracking.tensorboard:
        out.append(TensorBoardTracker(run_dir, rows))
    if cfg.tracking.mlflow:
        out.append(MlflowTracker(cfg, run_dir, rows))
    return out

