"""Synthetic worlds with known features and how well SAEs recover them: a DVC project of its own (docs/synthetic.md)."""
