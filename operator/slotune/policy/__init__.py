"""slotune.policy."""
