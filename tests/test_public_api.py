"""The public API: every exported name resolves, and secagg stays free of torch."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["secagg", "secagg.hazmat", "dp", "fl"])
def test_every_name_in_all_resolves(package):
    """Each name a package exports in __all__ exists."""
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_secagg_imports_without_torch():
    """secagg is pure protocol: importing it (and running a round) never imports torch."""
    code = (
        "import sys, secagg, numpy as np\n"
        "secagg.aggregate([np.arange(3)] * 5)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_dp_accounting_imports_without_torch():
    """dp's accounting is pure math: importing the package leaves torch and opacus unloaded."""
    code = (
        "import sys, dp\n"
        "dp.RdpAccountant().compose(dp.GaussianEvent(1.0)).get_epsilon(1e-5)\n"
        "assert 'torch' not in sys.modules and 'opacus' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _imported_packages(package: str) -> set[str]:
    import ast
    from pathlib import Path

    found = set()
    for path in (Path(__file__).resolve().parents[1] / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_package_layering():
    """secagg never imports torch, dp or fl; dp never imports fl; only dp.local uses opacus."""
    assert not _imported_packages("secagg") & {"torch", "opacus", "dp", "fl"}
    assert "fl" not in _imported_packages("dp")
    assert "cryptography" not in _imported_packages("dp") | _imported_packages("fl")
