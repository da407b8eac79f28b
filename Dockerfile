# The embedq image: `docker compose up --scale worker=N` runs N workers; the gateway runs from it too.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install ".[worker,gateway,monitor]" \
    && useradd --create-home --uid 1000 embedq

USER embedq
CMD ["embedq", "worker"]
