"""`raysim --help`, `raysim run --help` and a config error answer at once: torch, Ray and
the other heavy modules load only where a command needs them.

Timed by the child's own CPU seconds (user + sys, from os.wait4), beside Python's own
start-up measured the same way in the same test: on 2 shared cores other processes
stretch wall-clock time several-fold, but not a process's CPU time. Importing torch
alone costs over a second of CPU here, so the bound (start-up + 1 s) catches it; the
sys.modules checks below catch it outright."""
import os
import subprocess
import sys
import tempfile
import time

import pytest

from raysim.cli import main

HEAVY = ("torch", "ray", "pyarrow", "matplotlib")
TRIES = 3


def _timed(args: list[str]) -> tuple[float, float, int, str]:
    """(CPU seconds, wall seconds, exit status, stdout + stderr) of `python ARGS`."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, with its resource usage
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return usage.ru_utime + usage.ru_stime, wall, proc.returncode, out.read()


def _best(args: list[str]) -> tuple[float, float, int, str]:
    runs = [_timed(args) for _ in range(TRIES)]
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[-1][2], runs[-1][3]


@pytest.mark.parametrize(("argv", "rc", "says"), [
    (["--help"], 0, "bench"),
    (["run", "--help"], 0, "algorithm.name: "),
    (["run", "--set", "rounds=-1"], 2, "rounds: Input should be greater than or equal to 1"),
])
def test_answers_within_a_second_of_pythons_own_start_up(argv, rc, says):
    python_cpu, python_wall, _, _ = _best(["-c", "pass"])
    cpu, wall, status, said = _best(["-m", "raysim.cli", *argv])
    assert status == rc and says in said
    assert cpu <= python_cpu + 1.0, (f"raysim {' '.join(argv)}: {cpu:.2f} s CPU ({wall:.2f} s wall) against "
                                     f"python's {python_cpu:.2f} s ({python_wall:.2f} s)")


_LOADED = "import sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"


@pytest.mark.parametrize("code", [
    "import raysim.cli",
    "from raysim.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass",
    "from raysim.cli import main\nassert main(['run', '--set', 'rounds=-1']) == 2",
    "from raysim.cli import main\nassert main(['run', '--set', 'model.name=nope']) == 2",
    "from raysim.cli import main\nassert main(['plugins']) == 0",
])
def test_no_heavy_module_is_imported(code):
    proc = subprocess.run([sys.executable, "-c", code + "\n" + _LOADED.format(heavy=HEAVY)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_run_help_lists_every_registrys_names(capsys):
    import raysim

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # the lists are wrapped
    for field, registry in (("model.name", raysim.MODELS), ("data.dataset", raysim.DATASETS),
                            ("data.partition.scheme", raysim.PARTITIONERS), ("devices.mix keys", raysim.PROFILES),
                            ("algorithm.name", raysim.ALGORITHMS)):
        assert f"{field}: {', '.join(registry.names())}" in shown
    assert "autoflip_static" in shown  # a plug-in's names (autoflip's entry point), not only raysim's


def test_every_name_listed_without_torch_resolves_to_its_code():
    """The catalog names built-ins by import path; each must import and be what it claims."""
    import torch

    import raysim
    from autoflip.variants import VARIANTS
    from raysim.engine.api import FederatedAlgorithm

    for name in raysim.ALGORITHMS.names():
        cls = raysim.ALGORITHMS.get(name)
        assert issubclass(cls, FederatedAlgorithm)
        assert cls.name == name or name in VARIANTS  # AutoFLIP's variants share one class
    assert {n for n in raysim.ALGORITHMS.names() if raysim.ALGORITHMS.info(n).get("explores")} == set(VARIANTS)
    cfg = raysim.load_config(None, ["model.hidden=8", "model.layers=1"]).model
    for name in raysim.MODELS.names():
        shape = (12,) if raysim.MODELS.info(name)["inputs"] == ("sequence",) else (3, 32, 32)
        model = raysim.MODELS.get(name)(shape, 10, cfg.model_copy(update={"name": name}))
        assert isinstance(model, torch.nn.Module)


def test_a_lazy_name_is_listed_checked_and_described_without_importing_its_module(tmp_path, monkeypatch):
    from raysim.registry import Registry

    (tmp_path / "lazy_plugin_mod.py").write_text("THING = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("thing", "thing.name")
    reg.register_lazy("thing", "lazy_plugin_mod:THING", colour="red")
    assert reg.names() == ["thing"] and reg.check("thing") == "thing" and reg.info("thing") == {"colour": "red"}
    assert "lazy_plugin_mod" not in sys.modules
    assert reg.get("thing") is sys.modules["lazy_plugin_mod"].THING
    reg.register("thing", sys.modules["lazy_plugin_mod"].THING)  # the same object again is no clash
    with pytest.raises(ValueError, match="already registered"):
        reg.register_lazy("thing", "lazy_plugin_mod:THING")
    with pytest.raises(ValueError, match="unknown thing 'other'"):
        reg.check("other")
