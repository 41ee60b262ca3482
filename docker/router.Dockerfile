# The mlrelease router for a firm's registry: `python -m serving.split_follower` serves the V2 endpoint in front of
# the model-server Services and applies the live split from the cluster's split object.
# Build from the repository root: docker build -f docker/router.Dockerfile -t REGISTRY/mlrelease-router:TAG .
# cluster/images.py builds the same image for the local cluster (mmdebstrap and PyPI, no registry, no Docker): the
# packages here are its MLSERVER_PACKAGES and SERVING_PACKAGES, at the versions pinned in constraints.txt.
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY constraints.txt /tmp/constraints.txt
RUN python3 -m venv /opt/mlserver \
    && /opt/mlserver/bin/pip install --no-cache-dir --disable-pip-version-check -c /tmp/constraints.txt \
        mlserver mlserver-sklearn mlserver-lightgbm scikit-learn xgboost-cpu lightgbm \
        aiohttp httpx orjson uvloop prometheus-client pyarrow pydantic numpy pandas psutil joblib \
    && rm /tmp/constraints.txt

COPY serving /opt/mlrelease/serving

ENV PATH=/opt/mlserver/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/mlrelease \
    MLSERVER_PARALLEL_WORKERS=0 \
    OMP_NUM_THREADS=1
WORKDIR /opt/mlrelease
USER 65534:65534
EXPOSE 8080
CMD ["python", "-m", "serving.split_follower"]
