"""finops: an event-sourced FinOps pipeline for AI/API credit spend on Kafka and ClickHouse."""

__version__ = "0.1.0"
