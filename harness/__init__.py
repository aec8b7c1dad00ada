"""Benchmark harness for spiking neural networks (the snnTorch tutorial-5 network)."""

from importlib.metadata import version

__version__ = version("harness")  # one source: pyproject.toml
