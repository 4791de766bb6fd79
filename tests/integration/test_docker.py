"""The thin slice against containers (testcontainers): apache/kafka and clickhouse-server.

Runs where a Docker engine answers; elsewhere it is skipped with the reason. The same
check as tests/e2e/test_pipeline.py runs against the local broker and chdb everywhere.
"""

from __future__ import annotations

import socket
import uuid

import pytest

from finops import stack
from finops.settings import Settings
from ch_backends import CLICKHOUSE_IMAGE, docker_engine_problem
from support import check_thin_slice

pytestmark = [pytest.mark.integration, pytest.mark.docker]

KAFKA_IMAGE = "apache/kafka:4.1.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    problem = docker_engine_problem()
    if problem:
        pytest.skip(problem)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    port = _free_port()
    kafka = (DockerContainer(KAFKA_IMAGE)
             .with_bind_ports(9092, port)
             .with_envs(KAFKA_NODE_ID="1", KAFKA_PROCESS_ROLES="broker,controller",
                        KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
                        KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{port}",
                        KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
                        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                        KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
                        KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
                        KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
                        KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
                        KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0"))
    clickhouse = (DockerContainer(CLICKHOUSE_IMAGE).with_exposed_ports(8123)
                  .with_envs(CLICKHOUSE_USER="finops", CLICKHOUSE_PASSWORD="finops"))
    with kafka, clickhouse:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        wait_for_logs(clickhouse, "Ready for connections", timeout=120)
        host, ch_port = clickhouse.get_container_host_ip(), clickhouse.get_exposed_port(8123)
        settings = Settings(data_dir=tmp_path_factory.mktemp("docker"), kafka_bootstrap=f"127.0.0.1:{port}",
                            clickhouse_url=f"http://finops:finops@{host}:{ch_port}")
        stack.up(settings, log=lambda _m: None)  # external cluster: waits for it and creates the topics
        yield settings


def test_thin_slice_on_containers(containers):
    run = uuid.uuid4().hex[:10]
    check_thin_slice(containers.model_copy(update={"group_prefix": f"test-{run}",
                                                   "clickhouse_database": f"test_{run}"}))
