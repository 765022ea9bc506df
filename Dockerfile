# The runtime image of the Ray pods that kairay's RayServices and RayJobs start: Ray 2.60 with CUDA,
# vLLM, and kairay itself, so that `serve_apps.app:build_app` (the RayService's serveConfigV2) and
# `python -m tuning.job` (the RayJob's entrypoint) import.
#
#   docker build -t ghcr.io/kairay/kairay-runtime:0.1.0 .
#
# The Ray version must match kuberay.cluster.DEFAULT_RAY_VERSION (the rayVersion KubeRay is told).
FROM rayproject/ray:2.60.0-py311-gpu

ENV VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_TRAIN_ENABLE_PRINT_PATCH=0

WORKDIR /home/ray/kairay
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users kairay ./kairay
COPY --chown=ray:users controller ./controller
COPY --chown=ray:users serve_apps ./serve_apps
COPY --chown=ray:users presets ./presets
COPY --chown=ray:users kuberay ./kuberay
COPY --chown=ray:users tuning ./tuning
# The base image already has ray[serve]==2.60.0 (the version pyproject.toml pins), so pip keeps it.
RUN pip install --no-cache-dir ".[gpu]" \
 && python -c "import serve_apps.app, tuning.job"
