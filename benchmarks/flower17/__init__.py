"""Flower-17 study: CAM and ReCAM heads trained on a frozen backbone's cached features.

Run ``python -m benchmarks.flower17 --help``; see ``benchmarks/flower17/README.md``.
"""
