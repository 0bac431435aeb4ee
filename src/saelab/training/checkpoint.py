"""Resumable training checkpoints: weights, Adam state, RNG, counters and the logged curve.

Layout: ``<root>/step-00001200/{tensors.safetensors, state.json}``, each written
through :func:`atomic_dir`, so a checkpoint directory either is complete or does
not exist. The newest complete one is kept, older ones are deleted after a new one
lands. ``<root>`` must not be a DVC output: DVC deletes outputs before rerunning a
stage, which would destroy the checkpoint it should resume from.

A checkpoint carries a fingerprint of everything that determines the run (SAE
params except logging/checkpoint cadence, and the activation manifest); one with
another fingerprint is ignored, never resumed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from pathlib import Path

import torch

from saelab.io import atomic_dir, load_weights, read_json, save_weights, write_json

log = logging.getLogger("saelab")
CADENCE_KEYS = ("log_every", "checkpoint_every", "device")


def fingerprint(sae_params: dict, *data_files: Path) -> str:
    """Hash of the run's params (cadence keys aside) and the files that define its data
    (the cache manifest; or, when streaming, the LM weights and the token rows)."""
    run = {k: v for k, v in sae_params.items() if k not in CADENCE_KEYS}
    h = hashlib.sha256(json.dumps(run, sort_keys=True).encode())
    for path in data_files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


class Checkpointer:
    def __init__(self, root: str | Path, fingerprint: str, every: int):
        self.root, self.fingerprint, self.every = Path(root), fingerprint, every

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("step-*") if (p / "state.json").exists())

    def save(self, tensors: dict[str, torch.Tensor], state: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"step-{state['step']:08d}"
        with atomic_dir(path) as tmp:
            save_weights(tmp / "tensors.safetensors", tensors)
            write_json(tmp / "state.json", {"fingerprint": self.fingerprint, **state})
        for old in self._complete():
            if old != path:
                shutil.rmtree(old)
        return path

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The newest checkpoint of this run, or None (also when the newest belongs to another run)."""
        done = self._complete()
        if not done:
            return None
        state = read_json(done[-1] / "state.json")
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it belongs to a run with other params or data", done[-1])
            return None
        log.info("resuming from %s", done[-1])
        return load_weights(done[-1] / "tensors.safetensors"), state

    def clear(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)


def generator_state(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode()


def set_generator_state(gen: torch.Generator, encoded: str) -> None:
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8))
