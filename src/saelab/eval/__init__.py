"""Evaluation: reconstruction and CE metrics on held-out tokens, and cross-seed comparison (docs/metrics.md)."""
