# One image for the API and the worker. Build with --build-arg ORT=gpu for CUDA nodes.
FROM python:3.11-slim
ARG ORT=cpu
RUN apt-get update && apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/*
ENV LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 \
    GAZER_DATA_DIR=/data PYTHONUNBUFFERED=1
WORKDIR /app
# Its own layer, so a code change does not reinstall torch.
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY core core
COPY gazer gazer
COPY infra infra
COPY schemas schemas
COPY service service
COPY worker worker
RUN pip install --no-cache-dir ".[${ORT}]"
# Runs as a user of its own; /data (the shared volume) is the only place it writes.
RUN useradd --uid 10001 --create-home gazer && mkdir -p /data && chown gazer /data
USER gazer
EXPOSE 8000
CMD ["python", "-m", "service"]
