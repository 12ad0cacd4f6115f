"""Benchmark of the prediction service with wrk, reported as ratios against a bare-aiohttp baseline.

``python -m bench`` (``make bench``); see bench/README.md and docs/performance.md.
"""
