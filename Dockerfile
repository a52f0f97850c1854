# chatd: one image for `chatd serve`, `chatd migrate` and the other subcommands.
#   docker build -t chatd .
#   docker run -v ./deploy/chatd.toml:/etc/chatd/chatd.toml:ro -e CHATD_DATABASE_URL=... chatd
# The config file is read from /etc/chatd/chatd.toml; keys and URLs come from the environment
# or files mounted beside it (see docs/operations.md). The Redis tier is optional: set
# CHATD_REDIS_URL to share profiles and rate limits between instances (redis-py is in the image).
#
# BASE is any image with Python 3.11+ and its venv module: the slim Python image by default, or
# one built from distribution packages where no registry is reachable (scripts/container-image).
# PIP_OPTIONS reach the one pip install, e.g. an offline build from a wheelhouse mounted at
# /wheels: --no-index --find-links /wheels (docs/operations.md, "Building the image").
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG PIP_OPTIONS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stomp ./stomp
COPY chatd ./chatd
# The venv hides where the base keeps python (/usr/local/bin or /usr/bin); pip and setuptools
# leave with the build stage: the final image runs chatd, it installs nothing.
RUN python3 -m venv /opt/chatd \
 && /opt/chatd/bin/pip install $PIP_OPTIONS . \
 && /opt/chatd/bin/pip uninstall --yes pip setuptools

FROM ${BASE}
ENV PATH=/opt/chatd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATD_LOG_FORMAT=json \
    CHATD_DATA_DIR=/var/lib/chatd
RUN groupadd --system --gid 10001 chatd \
 && useradd --system --uid 10001 --gid chatd --home-dir /var/lib/chatd --shell /usr/sbin/nologin chatd \
 && mkdir -p /etc/chatd /var/lib/chatd \
 && chown chatd:chatd /var/lib/chatd
COPY --from=build /opt/chatd /opt/chatd
COPY deploy/chatd.toml /etc/chatd/chatd.toml
USER 10001:10001
WORKDIR /var/lib/chatd
EXPOSE 8080
# Liveness only: a database outage makes the instance unready, not unhealthy (restarting it
# would not help). Python, because the slim image has no curl; the port follows CHATD_BIND.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CHATD_BIND', ':8080').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd"]
CMD ["serve", "--config", "/etc/chatd/chatd.toml"]
