"""Prometheus metrics: what operators watch on an unattended GPU box. Counters and histograms live here only; the
service and pipeline record, `GET /metrics` exposes."""

from prometheus_client import Counter, Gauge, Histogram

GENERATIONS = Counter(
    "musicgen_generations_total", "Generations by how they ended", ["outcome"]
)  # outcome: started, completed, failed, cancelled
BUSY_REJECTIONS = Counter("musicgen_busy_rejections_total", "Requests answered 503 because every slot was taken")
SLOTS = Gauge("musicgen_slots", "Generations this server runs at once (--slots)")
SLOTS_IN_USE = Gauge("musicgen_slots_in_use", "Generation slots taken now")
GENERATION_SECONDS = Histogram(
    "musicgen_generation_seconds",
    "Wall time of completed generations",
    buckets=(0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600),
)
AUDIO_SECONDS = Counter("musicgen_audio_seconds_total", "Seconds of audio delivered")
DECODE_STEPS_PER_SECOND = Gauge("musicgen_decode_steps_per_second", "Token decode speed of the last generation")
GPU_MEMORY_BYTES = Gauge("musicgen_gpu_memory_bytes", "GPU memory allocated by PyTorch (0 on CPU)")
