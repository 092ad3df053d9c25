"""slotune.sim."""
