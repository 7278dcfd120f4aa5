"""Compression and export: quantize, prune, export ONNX / GGUF."""
