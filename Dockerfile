# syntax=docker/dockerfile:1
# celery-stalk: docker build -t celery-stalk . && docker run -e CELERY_STALK_BROKER_URL=redis://redis:6379/0 -p 9808:9808 celery-stalk
# The install steps live in docker/build-steps.sh, which the tests also run.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ exporter/
COPY docker/build-steps.sh docker/
RUN sh docker/build-steps.sh wheels /src /wheels

FROM python:3.12-slim
LABEL org.opencontainers.image.title="celery-stalk" \
      org.opencontainers.image.description="Prometheus exporter for Celery: tasks, queues and workers" \
      org.opencontainers.image.licenses="Apache-2.0"
# The wheels and the script are mounted for this one step only: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,from=build,source=/src/docker,target=/build \
    sh /build/build-steps.sh install /wheels
# Nothing is written at run time (bytecode was compiled at install), so the root
# filesystem can be read-only; configure with CELERY_STALK_* env vars (see README, Flags).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CELERY_STALK_LISTEN_ADDRESS=0.0.0.0:9808
USER 65532:65532
EXPOSE 9808
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ['CELERY_STALK_LISTEN_ADDRESS'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
ENTRYPOINT ["celery-stalk", "serve"]
