"""A progress bar over rounds showing accuracy and client-update throughput."""
from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from raysim.engine.api import ServerState
from raysim.engine.loop import Callback
from raysim.engine.record import RoundRecord
from raysim.engine.stats import Partial


class ProgressBar(Callback):
    def __init__(self, rounds: int, start_round: int, label: str):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"), TextColumn("{task.fields[ups]} updates/s"), TimeElapsedColumn(),
        )
        self.task = self.progress.add_task(label, total=rounds, completed=start_round, acc="-", ups="-")
        self.progress.start()

    def on_round_end(self, record: RoundRecord, state: ServerState, partial: Partial) -> None:
        fields = {"ups": f"{record.clients_done / record.wall_time_s:.1f}" if record.wall_time_s > 0 else "-"}
        if record.accuracy is not None:
            fields["acc"] = f"{record.accuracy:.3f}"
        self.progress.update(self.task, advance=1, **fields)

    def on_run_end(self, state: ServerState) -> None:
        self.progress.stop()
