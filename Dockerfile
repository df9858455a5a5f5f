# mcp-junction gateway image: SQLite state in the /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JUNCTION_HOST=0.0.0.0 \
    JUNCTION_PORT=8080 \
    JUNCTION_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home /data junction \
    && mkdir -p /data && chown junction /data

USER junction
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2)" || exit 1
# Set JUNCTION_ADMIN_KEY (or read the generated key from /data/admin.key) and JUNCTION_PUBLIC_URL.
CMD ["junction", "serve"]
