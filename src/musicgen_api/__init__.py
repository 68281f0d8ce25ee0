"""musicgen-api: a self-hosted HTTP service that turns a text description into music with Meta's MusicGen."""

__version__ = "0.1.0"
