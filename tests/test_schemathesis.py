"""Schemathesis against the running server's OpenAPI schema: bounded examples per operation,
zero 5xx, zero schema violations (status codes, content types, response bodies); and a
Hypothesis strategy of valid images with mutated fields, so the scoring path itself is fuzzed."""

import json

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from losses import REGISTRY
from service.server.schemas import ScoreResponse

from .servers import SubprocessServer, png_bytes, random_image

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 25


def test_api_conforms_to_its_schema(weights_dir):
    tried = {}
    with SubprocessServer("--models", "vgg16,inception_v3_fid", "--max-image-pixels", "1000000", "--body-timeout-s", "5") as srv:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            tried[label] = 0

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case):
                tried[label] += 1  # noqa: B023 - check() runs within this iteration
                case.call_and_validate(base_url=srv.url, checks=CHECKS)

            check()
    print(f"\nschemathesis: examples per operation {tried}")
    assert {"POST /v1/score", "POST /v1/score/batch", "POST /v1/distill", "GET /v1/metrics", "GET /readyz"} <= set(tried)
    # Every operation with inputs got its 25 examples; those without any (GET /healthz) need one.
    assert all(tried[label] == EXAMPLES_PER_OPERATION for label in tried if label.startswith("POST")), tried
    assert all(count > 0 for count in tried.values())


OPTION_KEYS = sorted({key for metric in REGISTRY.values() for key in metric.options})
OPTION_VALUES = st.one_of(
    st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
)
SIDES = st.sampled_from([8, 11, 24, 33, 64, 180])


@st.composite
def scoring_requests(draw):
    """Decodable images (sizes that fit or break each metric) with metrics and options mutated."""
    height, width = draw(SIDES), draw(SIDES)
    files = [("sr", ("sr.png", png_bytes(random_image(height, width, draw(st.integers(0, 9)))), "image/png"))]
    gt_size = draw(st.sampled_from([(height, width), (width, height), (height + 1, width)]))
    files.append(("gt", ("gt.png", png_bytes(random_image(*gt_size, 1)), "image/png")))
    for role in ("lr", "teacher"):
        if draw(st.booleans()):
            side = draw(st.sampled_from([max(1, height // 4), height, height * 2]))
            files.append((role, (f"{role}.png", png_bytes(random_image(side, max(1, side * width // height), 2)), "image/png")))
    valid = st.lists(st.sampled_from(["psnr", "ssim", "l1", "perceptual", "lpips_alex", "lpips_vgg"]), min_size=1, max_size=3)
    names = draw(st.one_of(valid, st.lists(st.sampled_from([*REGISTRY, "bogus", "", " psnr"]), max_size=4)))
    options = draw(
        st.one_of(
            st.sampled_from(["{}", '{"crop_border": 2}', '{"y_channel": true}']),
            st.dictionaries(st.sampled_from([*OPTION_KEYS, "zz"]), OPTION_VALUES, max_size=3).map(json.dumps),
            st.text(max_size=12),
        )
    )
    return files, dict(metrics=",".join(names), options=options)


def test_scoring_path_under_mutated_valid_requests(weights_dir):
    """Every answer is a 200 that validates against ScoreResponse or a 4xx/503 whose detail names
    a field; never a 5xx crash, and the server stays up."""
    statuses = {}
    with SubprocessServer("--models", "vgg16,alexnet", "--max-image-pixels", "1000000") as srv:

        @given(request=scoring_requests())
        # The same 60 draws every run: how often a random draw lands on a 200 moves with the size of
        # the catalogue, and a run that reached one path only would prove nothing.
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
        def check(request):
            files, data = request
            response = httpx.post(f"{srv.url}/v1/score", files=files, data=data, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (200, 413, 422, 503), response.text
            if response.status_code == 200:
                ScoreResponse.model_validate(response.json())
            else:
                detail = response.json()["detail"][0]
                assert detail["loc"][0] == "body" and detail["msg"], detail
                assert response.status_code != 503 or "needs model" in detail["msg"], detail

        check()
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
    print(f"\nscoring fuzz: statuses {statuses}")
    assert statuses.get(200, 0) >= 5 and statuses.get(422, 0) >= 5  # both paths were reached
