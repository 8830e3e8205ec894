"""Imports run one way: the generic simulator (raysim) never imports the pruning layer
(autoflip), which reaches it only through the registries and the algorithm hooks."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_raysim_never_imports_autoflip():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] == "autoflip")
                 for p in sorted((ROOT / "raysim").rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_imports_anywhere_in_a_module(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from autoflip.structured import replay\n    import autoflip.masks\n")
    assert _imports(sample) == {"autoflip.structured", "autoflip.masks"}
