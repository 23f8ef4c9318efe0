# syntax=docker/dockerfile:1
# The offload worker (ECS Fargate, arm64). Build and push with `make image`:
#   docker build --platform linux/arm64 -t offload-worker .
# python:3.12-slim is a multi-arch image; --platform picks its arm64 variant.

FROM python:3.12-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/offload
# README.md is the package's long description (optional for the build)
COPY pyproject.toml README.md* ./
COPY src ./src
# `pip install .` with the worker extra (OpenTelemetry, for the ADOT sidecar): the runtime
# dependencies of pyproject.toml only (no dev/local/bench), held to the versions the Lambda
# package is built with (src/requirements.txt).
RUN /opt/offload/bin/pip install --constraint src/requirements.txt ".[worker]"

FROM python:3.12-slim
ENV PATH=/opt/offload/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 offload \
 && useradd --system --uid 10001 --gid offload --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin offload
COPY --from=build /opt/offload /opt/offload
WORKDIR /tmp
USER 10001:10001
# ECS stops a task with SIGTERM; the worker handles it itself (stops taking jobs, gives the
# job in hand OFFLOAD_SHUTDOWN_GRACE_S). Exec form, so `offload` is the process that gets
# the signal, not a shell. The task definition adds an init (initProcessEnabled).
STOPSIGNAL SIGTERM
ENTRYPOINT ["offload"]
# `offload worker` by default; other commands for one-off tasks, e.g.
#   docker run IMAGE dlq list      (aws ecs run-task ... command override ["dlq", "list"])
CMD ["worker"]
