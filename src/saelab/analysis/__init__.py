"""The replication analyses of a trained SAE (definitions: docs/metrics.md).

``weights`` holds pure functions of the SAE's (and LM's) weights; ``passes`` holds the
analyses that stream eval tokens through the LM and SAE.
"""
