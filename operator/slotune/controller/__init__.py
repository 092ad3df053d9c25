"""slotune.controller."""
