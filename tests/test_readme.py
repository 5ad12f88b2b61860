"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    """The README shows at least the in-process and the sans-I/O examples."""
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block, capsys, tmp_path, monkeypatch):
    """Each python block executes without error (and its printed claims hold)."""
    monkeypatch.chdir(tmp_path)  # examples may write run folders
    exec(compile(block, str(README), "exec"), {})
    if "[15 15 15 15]" in block:
        assert "[15 15 15 15]" in capsys.readouterr().out
