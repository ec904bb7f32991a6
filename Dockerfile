# The spendwatch image: `spendwatch run` (the watcher) by default; `spendwatch chain` for the bridge.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY watcher ./watcher
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system --uid 10001 spendwatch
USER spendwatch
# /metrics of the watcher (metrics.port) and of the chain bridge (chain.metrics_port)
EXPOSE 9464 9465
ENTRYPOINT ["spendwatch"]
CMD ["run"]
