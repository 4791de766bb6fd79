"""What apps use to talk to finops: :class:`UsageProducer` (one usage event per request),
:func:`usage_from_openai` with :class:`RateCard` and :func:`measure_latency`, and
:class:`CommandClient` (allocations and the other commands, with their outcome)."""

from .commands import CommandClient, CommandRejected, Outcome, OutcomeTimeout, Pending
from .usage import InvalidEvent, Latency, RateCard, UsageProducer, measure_latency, usage_from_openai

__all__ = ["CommandClient", "CommandRejected", "InvalidEvent", "Latency", "Outcome", "OutcomeTimeout", "Pending",
           "RateCard", "UsageProducer", "measure_latency", "usage_from_openai"]
