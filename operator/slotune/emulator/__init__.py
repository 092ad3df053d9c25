"""slotune.emulator."""
