"""Schema-driven fuzzing: schemathesis reads the server's own OpenAPI document and generates requests for every
operation from it (valid ones and near misses). No answer may be a server error other than the documented busy 503,
and every refusal is the project's JSON error."""

import pathlib
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerFactory


@pytest.fixture(scope="module")
def operations(server_factory: ServerFactory, mono_model: pathlib.Path) -> list[Any]:
    # One-second clips keep the valid requests among the generated ones quick.
    server = server_factory(mono_model, "--max-duration", "1", "--no-mbd")
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_covers_the_api(operations: list[Any]) -> None:
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("GET", "/api/healthcheck"), ("GET", "/api/info"), ("POST", "/api/music")}  # fmt: skip


def test_no_server_errors(operations: list[Any]) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        operation = data.draw(st.sampled_from(operations))
        case = data.draw(operation.as_strategy())
        response = case.call(timeout=60)
        busy = response.status_code == 503 and case.path in ("/api/music", "/api/healthcheck")
        assert response.status_code < 500 or busy, f"{case.method} {case.path}: {response.status_code}"
        if 400 <= response.status_code < 500:
            assert "error" in response.json() and set(response.json()) <= {"error", "field"}

    check()
