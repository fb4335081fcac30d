# The Esper services' image (used by docker-compose.yml). Local development needs none of it: see README.
FROM python:3.11-slim
# inductor's CPU tiers (STANDARD, AGGRESSIVE) build C++ at compile time: Tezzeret needs a compiler in the image
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/esper
COPY pyproject.toml README.md ./
COPY cli cli
COPY proto proto
COPY streams streams
COPY projections projections
COPY compiler compiler
COPY safety safety
COPY examples examples
RUN pip install --no-cache-dir .
ENTRYPOINT []
