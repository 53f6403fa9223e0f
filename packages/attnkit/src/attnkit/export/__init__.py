"""ONNX export of attention specs and models, and onnxruntime parity helpers."""

from attnkit.export.onnx import AttentionModule, check_attention_export, run_onnx, to_onnx

__all__ = ["AttentionModule", "check_attention_export", "run_onnx", "to_onnx"]
