"""The wire protocol shared by client and server: image roles, form fields, endpoint paths
and the default metrics. Torch-free and FastAPI-free, so the client-only install imports it.
"""

from __future__ import annotations

# Image roles, in the order a triplet (plus the optional teacher) is written.
IMAGE_ROLES = ("sr", "gt", "lr", "teacher")
OPTIONAL_ROLES = ("gt", "lr", "teacher")  # sr is required whatever the metrics; the metrics say which others

# Form fields next to the images.
METRICS_FIELD = "metrics"
OPTIONS_FIELD = "options"
# Query parameter of /v1/distill.
DISTILL_CONFIG_PARAM = "config"

# Metrics scored when a request names none (equal to ``losses.DEFAULT_METRICS``; a test pins it).
DEFAULT_METRICS = ("psnr", "ssim", "perceptual")
RANDOM_WEIGHTS_WARNING = "random backbone weights (--random-weights): scores are not comparable"

API_PREFIX = "/v1"
SCORE_PATH = f"{API_PREFIX}/score"
SCORE_BATCH_PATH = f"{API_PREFIX}/score/batch"
SCORE_CLIP_PATH = f"{API_PREFIX}/score/clip"
# Dataset metrics (fid, kid): per-image features for the client to accumulate over a set.
FEATURES_PATH = f"{API_PREFIX}/features"
FEATURES_IMAGE_FIELD = "image"
DEFAULT_DATASET_METRICS = ("fid", "kid")
DISTILL_PATH = f"{API_PREFIX}/distill"
CATALOGUE_PATH = f"{API_PREFIX}/metrics"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
PROMETHEUS_PATH = "/metrics"
