"""slotune.metrics."""
