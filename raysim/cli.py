"""`raysim run [CONFIG] [--set key=value ...] [--out DIR] [--resume DIR]`, `raysim plugins`,
`raysim bench NAME`, `raysim report RUN [RUN ...] [--out DIR]`."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from raysim.config import ConfigError, load_config, resume_overrides

# Heavy modules (torch, ray, pyarrow, matplotlib) load where a command needs them, so that
# --help and a config error answer at once (tests/test_cli_speed.py).


def plugin_names() -> list[tuple[str, list[str]]]:
    """(config field, names) per registry, read from the registries (plug-ins included; no torch)."""
    import raysim

    kinds = (("model.name", raysim.MODELS), ("data.dataset", raysim.DATASETS),
             ("data.partition.scheme", raysim.PARTITIONERS), ("devices.mix keys", raysim.PROFILES),
             ("algorithm.name", raysim.ALGORITHMS))
    return [(field, registry.names()) for field, registry in kinds]


def _run_epilog() -> str:
    lines = ["plug-in names accepted (or an import path package.module:attribute to your own code):"]
    for field, names in plugin_names():
        lines += textwrap.wrap(", ".join(names), width=88, initial_indent=f"  {field}: ", subsequent_indent="    ")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """An epilog computed only when help is printed: the plug-in names cost imports that
    parsing the arguments of a run does not need."""

    def __init__(self, *args, epilog_factory=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_factory = epilog_factory

    def format_help(self) -> str:
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="raysim", description="Federated-learning cluster simulator (AutoFLIP).")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment (no CONFIG: the embedded default)",
                         epilog_factory=_run_epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", nargs="?", type=Path, help="experiment YAML; omitted: the embedded default")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field, e.g. --set rounds=5 --set clients.optimizer.lr=0.01")
    run.add_argument("--out", type=Path, help="parent folder of the run folder (default: the config's output.dir)")
    run.add_argument("--resume", type=Path, metavar="DIR",
                     help="continue the run in DIR from its latest intact checkpoint; with --set rounds=N, extend "
                          "a finished run (a resume may set only rounds, stop_on_divergence, output.progress, "
                          "backend.* and metrics.*)")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar: one line per round instead (logs, CI; also when stdout is no terminal)")
    run.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    run.add_argument("--address", metavar="ADDR",
                     help="Ray cluster to run on (same as --set backend.address=ADDR; default: $RAY_ADDRESS, "
                          "else a local Ray instance for the run)")
    sub.add_parser("plugins", help="list the registered models, datasets, partitioners, device profiles and "
                                   "algorithms (any of them may also be an import path package.module:attribute)")
    report = sub.add_parser("report", help="compare run folders in one table and one set of plots")
    report.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run folders (as `raysim run` writes them)")
    report.add_argument("--out", type=Path, metavar="DIR",
                        help="a new or empty folder for the report (default: a new reports/report-STAMP)")
    from raysim.benchmarks import add_bench_parsers

    add_bench_parsers(sub)
    return p


def _plugins() -> int:
    """Every registry's names, read from the registries themselves (plug-ins included)."""
    for field, names in plugin_names():
        print(f"{field}: {', '.join(names)}")
    print("Any of them may also be an import path package.module:attribute to your own code (docs/extending.md).")
    return 0


def _run(args: argparse.Namespace, started: list[Path]) -> int:
    """`started` receives the run folder once there is one (for the Ctrl-C message)."""
    overrides = args.overrides + ([f"backend.address={args.address}"] if args.address else [])
    if args.resume:
        if args.config or args.out:
            raise ConfigError("--resume continues a run with its saved config and folder: drop CONFIG and --out")
        from raysim.experiment import resumed_config

        cfg, run_dir = resume_overrides(resumed_config(args.resume), overrides), args.resume
    else:
        cfg = load_config(args.config, overrides)  # before torch is imported: a bad config fails at once
    from raysim.experiment import execute, new_run
    from raysim.results.summary import print_summary

    if not args.resume:
        run_dir = new_run(cfg, args.out)
    started.append(run_dir)
    summary = execute(cfg, run_dir, resume=bool(args.resume), progress=False if args.no_progress else None)
    print_summary(summary)
    return 1 if summary["stopped_early"] and "diverged" in summary["stopped_early"] else 0


def _interrupted(run_dir: Path | None) -> str:
    from raysim.results.checkpoint import latest_checkpoint

    stem = latest_checkpoint(run_dir) if run_dir is not None and run_dir.is_dir() else None
    if stem is None:
        return "interrupted before the first checkpoint; nothing to resume (the run folder was removed)" \
            if run_dir is not None and not run_dir.exists() else "interrupted before the first checkpoint"
    return f"interrupted after round {int(stem.name.removeprefix('round-'))}; resume with: raysim run --resume {run_dir}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from raysim.data.errors import DataError

    started: list[Path] = []
    try:
        if args.command == "bench":
            from raysim.benchmarks import bench_main

            return bench_main(args)
        if args.command == "plugins":
            return _plugins()
        if args.command == "report":
            from raysim.results.report import report

            report(args.runs, args.out)
            return 0
        return _run(args, started)
    except (ConfigError, DataError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"raysim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nraysim: {_interrupted(started[-1] if started else None)}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: one line, the traceback on request
        if getattr(args, "debug", False):
            raise
        print(f"raysim: internal error: {type(exc).__name__}: {exc}\n(run again with --debug for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
