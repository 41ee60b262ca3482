# The mlrelease model server for a firm's registry: MLServer with the sklearn, LightGBM and XGBoost runtimes, started
# by `python -m serving.modelserver`, which refuses to serve unless the artifact's sha256 is MODEL_SHA256.
# Mount the model directory (model-settings.json and the artifact) at /models/model and set MODEL_SHA256; or let an init
# container of this image fetch an s3:// model directory there first (`python -m automation.stores.pod_fetch URL SHA256
# /models/model`, what the Kubernetes target's pods run), which checks the same digest.
# Build from the repository root: docker build -f docker/modelserver.Dockerfile -t REGISTRY/mlrelease-modelserver:TAG .
# cluster/images.py builds the same image for the local cluster (mmdebstrap and PyPI, no registry, no Docker): the
# packages here are its MLSERVER_PACKAGES, SERVING_PACKAGES and FETCH_PACKAGES, at the versions pinned in
# constraints.txt, plus requirements-nodeps.txt installed without dependencies (mlserver-xgboost would pull the CUDA
# `xgboost` wheel).
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY constraints.txt requirements-nodeps.txt /tmp/
RUN python3 -m venv /opt/mlserver \
    && /opt/mlserver/bin/pip install --no-cache-dir --disable-pip-version-check -c /tmp/constraints.txt \
        mlserver mlserver-sklearn mlserver-lightgbm scikit-learn xgboost-cpu lightgbm \
        aiohttp httpx orjson uvloop prometheus-client pyarrow pydantic numpy pandas psutil joblib boto3 botocore \
    && /opt/mlserver/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
        -r /tmp/requirements-nodeps.txt \
    && rm /tmp/constraints.txt /tmp/requirements-nodeps.txt

COPY serving /opt/mlrelease/serving
COPY automation/__init__.py /opt/mlrelease/automation/
COPY automation/stores /opt/mlrelease/automation/stores

ENV PATH=/opt/mlserver/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONPATH=/opt/mlrelease \
    MLSERVER_PARALLEL_WORKERS=0 \
    OMP_NUM_THREADS=1
WORKDIR /opt/mlrelease
USER 65534:65534
EXPOSE 8080
# A shell only to expand MODEL_SHA256; exec hands PID 1 to Python, so SIGTERM reaches MLServer.
CMD ["sh", "-c", "exec python -m serving.modelserver /models/model --sha256 \"$MODEL_SHA256\""]
