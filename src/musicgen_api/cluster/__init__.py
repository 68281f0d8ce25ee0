"""Many replicas on Ray Serve behind one address, with the single-process API's meanings kept at cluster level.

Imports Ray: only `musicgen-api cluster` reaches this package, so `serve` never needs the `ray` extra.
"""
