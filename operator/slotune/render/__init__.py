"""slotune.render."""
