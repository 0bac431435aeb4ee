"""Stages of the questions pipeline, each run as ``python -m research.questions.stages.<name>``."""
