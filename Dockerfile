# s2-feature image: the locked dependencies (uv.lock) in a virtual environment, run as a
# non-root user. The Helm chart (deploy/helm/s2-feature) runs it with a read-only root
# filesystem and a writable volume at /data.
#   docker build -t s2-feature:0.1.0 .

FROM python:3.11-slim-bookworm AS build
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
WORKDIR /app
# Dependencies first: this layer is rebuilt only when the lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 s2 \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /data s2 \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    S2_API_HOST=0.0.0.0 \
    S2_API_PORT=8080 \
    S2_DB_SQLITE_PATH=/data/s2.db \
    S2_LAKE_DIR=/data/lake \
    S2_CONFIG_CACHE=/data/config-cache.json
WORKDIR /data
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["s2-feature"]
CMD ["run"]
