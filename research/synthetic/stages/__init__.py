"""Stages of the synthetic pipeline, each run as ``python -m research.synthetic.stages.<name>``."""
