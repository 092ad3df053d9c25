"""slotune: keep LLM inference deployments on a latency SLO."""

__version__ = "0.1.0"
