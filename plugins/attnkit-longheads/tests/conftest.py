"""Test setup for attnkit-longheads (no Triton backend yet, nothing to set up)."""
