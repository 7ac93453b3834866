"""The README's Python examples run as written; docstring examples of the public
modules pass as doctests."""

import doctest
import importlib
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert len(blocks) >= 3
  namespace: dict = {}
  for block in blocks:  # blocks build on each other, like a notebook
    if "..." in block.replace("...)", ""):
      continue
    exec(compile(block, str(README), "exec"), namespace)
  assert float(namespace["loss"]) > 0
  assert sorted(namespace["metrics"]) == ["loss", "loss/hint", "loss/hinton_kd"]


MODULES = ["kdjax.losses._kd", "kdjax.losses._features", "kdjax.losses._relational",
           "kdjax.losses._weights", "kdjax.losses._compose", "kdjax.fusion._combine",
           "kdjax.fusion._fit", "kdjax.fusion._deep", "kdjax.fusion._soups", "kdjax.metrics",
           "kdjax.ensemble", "kdjax.losses._divergences", "kdjax.losses._sparse",
           "kdjax.losses._fused", "kdjax.losses._targets"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
