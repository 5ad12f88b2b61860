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
        "secagg.aggregate([np.arange(3), np.arange(3)])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
