# The finops processors and CLI (for compose.yaml). Kafka and ClickHouse run in their own images.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY finops finops
COPY schemas schemas
COPY producers producers
COPY processors processors
COPY projections projections
RUN pip install --no-cache-dir .
ENTRYPOINT ["finops"]
