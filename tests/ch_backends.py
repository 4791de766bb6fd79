"""Where the ClickHouse contract tests run: chdb always; a server when one is available.

A server comes from FINOPS_TEST_CLICKHOUSE_URL, or from a clickhouse-server container
when a Docker engine answers (testcontainers); otherwise those cases skip with the reason.
"""

from __future__ import annotations

import os
import uuid

import pytest

CLICKHOUSE_IMAGE = "clickhouse/clickhouse-server:25.8"


def docker_engine_problem() -> str | None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:  # any failure means: no usable engine here
        return f"no Docker engine answers ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


@pytest.fixture(scope="session")
def clickhouse_server_url():
    """http://user:pass@host:port of a ClickHouse server, or a skip with the reason."""
    url = os.environ.get("FINOPS_TEST_CLICKHOUSE_URL")
    if url:
        yield url
        return
    problem = docker_engine_problem()
    if problem:
        pytest.skip(f"no ClickHouse server: FINOPS_TEST_CLICKHOUSE_URL is unset and {problem}")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = (DockerContainer(CLICKHOUSE_IMAGE).with_exposed_ports(8123)
                 .with_envs(CLICKHOUSE_USER="finops", CLICKHOUSE_PASSWORD="finops"))
    with container:
        wait_for_logs(container, "Ready for connections", timeout=120)
        yield f"http://finops:finops@{container.get_container_host_ip()}:{container.get_exposed_port(8123)}"


def database_name() -> str:
    return f"test_{uuid.uuid4().hex[:10]}"
