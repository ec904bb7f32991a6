# The spendwatch image: `spendwatch run` (the watcher) by default; `spendwatch chain` for the bridge.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY watcher ./watcher
# /var/lib/spendwatch (the chain bridge's checkpoint) is created owned by the user: a named volume mounted
# there copies this owner on first use; without it the volume is root's and the bridge cannot write
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 spendwatch \
    && mkdir -p /var/lib/spendwatch && chown spendwatch /var/lib/spendwatch
USER spendwatch
# /metrics of the watcher (metrics.port) and of the chain bridge (chain.metrics_port)
EXPOSE 9464 9465
ENTRYPOINT ["spendwatch"]
CMD ["run"]
