"""Benchmark harness for spiking neural networks (the snnTorch tutorial-5 network)."""

__version__ = "0.1.0"
