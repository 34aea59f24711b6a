"""Schemathesis against the running server's OpenAPI schema: bounded examples per operation,
zero 5xx, zero schema violations (status codes, content types, response bodies)."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .servers import SubprocessServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 25


def test_api_conforms_to_its_schema(weights_dir):
    tried = {}
    with SubprocessServer("--models", "vgg16", "--max-image-pixels", "1000000", "--body-timeout-s", "5") as srv:
        schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            tried[label] = 0

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case):
                tried[label] += 1
                case.call_and_validate(base_url=srv.url, checks=CHECKS)

            check()
    print(f"\nschemathesis: examples per operation {tried}")
    assert {"POST /v1/score", "POST /v1/score/batch", "POST /v1/distill", "GET /v1/metrics", "GET /readyz"} <= set(tried)
    assert all(count > 0 for count in tried.values())
