"""Schemathesis against the running server's OpenAPI schema: bounded examples, zero 5xx,
zero schema violations (status codes, content types, response bodies)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .servers import SubprocessServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(weights_dir):
    with SubprocessServer("--models", "vgg16", "--max-image-pixels", "1000000", "--body-timeout-s", "5") as srv:
        yield schemathesis.openapi.from_url(f"{srv.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case):
    case.call_and_validate(checks=CHECKS)
