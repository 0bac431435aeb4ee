"""Research built on saelab: the reference post's open questions, synthetic worlds with known features,
sweeps and findings. It imports saelab; saelab never imports it (tests/test_layout.py, ruff banned-api).
Each pipeline folder holds its own dvc.yaml, params.yaml, stage modules and results."""
