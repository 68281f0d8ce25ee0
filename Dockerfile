# musicgen-api on a CUDA GPU. Build: docker build -t musicgen-api .
# Run:   docker run --gpus all -p 5000:5000 -v musicgen-cache:/models musicgen-api [serve flags, e.g. --model facebook/musicgen-medium]
# PyPI's torch wheels bundle their CUDA libraries; the image needs only the driver (from the host) and Python.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir . && rm -rf /root/.cache

RUN useradd --create-home --uid 1000 musicgen && mkdir -p /models && chown musicgen /models
USER musicgen

# Weights (MusicGen, MultiBand Diffusion) are downloaded once into this volume and reused by later containers.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models \
    MUSICGEN_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
VOLUME /models
EXPOSE 5000

# 200 = idle, 503 = busy generating: both mean the process is alive.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s \
  CMD python3 -c "import urllib.request, urllib.error, sys; \
exec('try: urllib.request.urlopen(\"http://127.0.0.1:5000/api/healthcheck\", timeout=4)\nexcept urllib.error.HTTPError as e: sys.exit(e.code != 503)\nexcept Exception: sys.exit(1)')"

STOPSIGNAL SIGTERM
ENTRYPOINT ["musicgen-api", "serve"]
