"""slotune.sandbox."""
