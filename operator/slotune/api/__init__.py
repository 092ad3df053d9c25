"""slotune.api."""
