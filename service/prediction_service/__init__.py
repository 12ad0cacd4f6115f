"""Prediction service: ONNX models over HTTP (aiohttp), two-tier cache, PostgreSQL prediction log."""

__version__ = "0.1.0"
