"""Tensors only: loading MusicGen, encoding text, and turning a description into audio codes.

The engine knows nothing about HTTP, JSON or threads: it takes `GenerationParams` and a step hook, and returns codes.
"""
