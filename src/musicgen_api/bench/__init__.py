"""Benchmarks (`python -m musicgen_api.bench`) and the random-weight checkpoints they and the tests run on."""
