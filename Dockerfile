# syntax=docker/dockerfile:1
# The phasegate operator image.
#
#   docker build -t phasegate:0.1.0 .
#   helm install phasegate charts/phasegate -n phasegate-system --create-namespace \
#     --set image.repository=phasegate --set image.tag=0.1.0
#
# Two stages: the first builds a virtualenv with phasegate and its dependencies
# installed (pip install .), the second copies only that virtualenv onto a clean
# slim image and runs it as an unprivileged user. The context is an allowlist
# (.dockerignore): pyproject.toml, README.md, LICENSE and operator/ only.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/phasegate
WORKDIR /src
COPY . .
RUN /opt/phasegate/bin/pip install --upgrade pip \
 && /opt/phasegate/bin/pip install . \
 && /opt/phasegate/bin/phasegate --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="phasegate" \
      org.opencontainers.image.description="Kubernetes operator: gated capital rollouts of trading strategies, with circuit breakers" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/phasegate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric UID/GID, so that Kubernetes' runAsNonRoot can verify it
# (the chart's podSecurityContext uses the same numbers).
RUN groupadd --system --gid 10001 phasegate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin phasegate
COPY --from=build /opt/phasegate /opt/phasegate
USER 10001:10001
WORKDIR /tmp
# 8080: the operator's Prometheus metrics; 8081: liveness (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["phasegate"]
CMD ["run"]
