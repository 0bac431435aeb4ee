"""The reference post's open questions as experiments: a DVC project of its own (dvc.yaml here; docs/questions.md)."""
