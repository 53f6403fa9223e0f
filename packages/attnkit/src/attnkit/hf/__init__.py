"""Hugging Face transformers integration: :func:`patch` and the families it supports."""

from __future__ import annotations

from attnkit.hf.adapter import FAMILIES, Session, attention_layers, patch

__all__ = ["FAMILIES", "Session", "attention_layers", "patch"]
