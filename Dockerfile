# The Esper services' image (used by docker-compose.yml). Local development needs none of it: see README.
FROM python:3.11-slim
WORKDIR /opt/esper
COPY pyproject.toml README.md ./
COPY cli cli
COPY proto proto
COPY streams streams
COPY projections projections
COPY compiler compiler
COPY safety safety
RUN pip install --no-cache-dir .
ENTRYPOINT []
