# chatd: one image for `chatd serve`, `chatd migrate` and the other subcommands.
#   docker build -t chatd .
#   docker run -v ./deploy/chatd.toml:/etc/chatd/chatd.toml:ro -e CHATD_DATABASE_URL=... chatd
# The config file is read from /etc/chatd/chatd.toml; keys and URLs come from the environment
# or files mounted beside it (see docs/operations.md).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stomp ./stomp
COPY chatd ./chatd
RUN python -m venv /opt/chatd && /opt/chatd/bin/pip install .

FROM python:3.11-slim
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
# would not help). Python, because the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["chatd"]
CMD ["serve", "--config", "/etc/chatd/chatd.toml"]
