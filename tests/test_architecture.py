"""The layers of README's "Development" section hold: contracts, and no import cycle."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")  # installed with import-linter (the test extras)

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout


def test_no_import_cycle_even_counting_imports_inside_functions():
    graph = grimp.build_graph("kspec_xr", cache_dir=None)  # every import, nested ones too
    modules = sorted(graph.modules)
    state: dict[str, int] = {}
    cycles = []

    def visit(module, path):
        state[module] = 1
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in modules:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_kernels_use_numpy_and_scipy_only():
    graph = grimp.build_graph("kspec_xr", include_external_packages=True, cache_dir=None)
    kernels = {m for m in graph.modules if m.startswith("kspec_xr.kernels")}
    imported = set().union(*(graph.find_modules_directly_imported_by(m) for m in kernels))
    outside = {m.split(".")[0] for m in imported if not m.startswith("kspec_xr")}
    outside -= set(sys.stdlib_module_names) | {"__future__"}
    assert outside <= {"numpy", "scipy"}, outside
    inside = {
        m for m in imported if m.startswith("kspec_xr") and not m.startswith("kspec_xr.kernels")
    }
    # (threads: the standard library's thread pool, for the independent stars of a block)
    allowed = {"kspec_xr._base.errors", "kspec_xr._base.status", "kspec_xr._base.threads"}
    assert inside <= allowed, inside
