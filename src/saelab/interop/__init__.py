"""Interchange with other tools: SAELens's on-disk format, the reference code's checkpoints, and the Hub."""
