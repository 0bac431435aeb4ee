"""Training: the architecture-agnostic Trainer (resampling, schedules, DDP) and resumable checkpoints."""
