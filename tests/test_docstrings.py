"""Every example in the library's docstrings runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import dp
import fl
import secagg

MODULES = sorted(
    info.name
    for package in (secagg, dp, fl)
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
    if not info.name.endswith(".__main__")  # running it is the command itself
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    """doctest over one module (ELLIPSIS on; modules of an absent optional extra are skipped)."""
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == "flwr":
            pytest.skip("the Flower adapter needs the optional extra privagg[flower]")
        raise
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
