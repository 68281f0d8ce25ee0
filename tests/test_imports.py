"""The parts that run no model import no model code: the HTTP layer, the CLI client and the cluster's ingress (a
replica-less process on a machine that may have no GPU) load neither torch nor transformers."""

import subprocess
import sys

import pytest

CHECK = """
import importlib, sys
importlib.import_module(sys.argv[1])
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
assert not heavy, f"{sys.argv[1]} imported {heavy}"
"""


@pytest.mark.parametrize(
    "module", ["musicgen_api.api.app", "musicgen_api.cli", "musicgen_api.client", "musicgen_api.cluster.ingress"]
)
def test_imports_neither_torch_nor_transformers(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", CHECK, module], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
