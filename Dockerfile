# The image the Kubernetes manifests run (deploy/kubernetes): wsbalancer in a virtual
# environment at /opt/wsbalancer, as in the systemd recipe. Build from the repository root:
#   docker build -t wsbalancer:0.1.0 .
# Run with the configuration mounted where the ConfigMap goes, a read-only root and a
# writable /tmp (worker processes talk to the master over Unix sockets there):
#   docker run --read-only --tmpfs /tmp -p 8080:8080 \
#     -v "$PWD/wsbalancer.yaml:/etc/wsbalancer/wsbalancer.yaml:ro" wsbalancer:0.1.0
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY . .
# The plugin run writes Twisted's plugin cache now: at run time the tree is read-only.
RUN python -m venv /opt/wsbalancer \
    && /opt/wsbalancer/bin/pip install --no-cache-dir . \
    && /opt/wsbalancer/bin/twistd wsbalancer --help >/dev/null

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin wsbalancer
COPY --from=build /opt/wsbalancer /opt/wsbalancer
ENV PATH=/opt/wsbalancer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/wsbalancer
USER 10001:10001
EXPOSE 8080 8081
# SIGTERM drains: /readyz turns 503, sessions get 1001 over shutdown.drain_period.
STOPSIGNAL SIGTERM
# 503 (no usable backend, or draining) makes urlopen raise: unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/readyz', timeout=2)"]
CMD ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "wsbalancer", \
     "--config", "/etc/wsbalancer/wsbalancer.yaml"]
