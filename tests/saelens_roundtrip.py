"""Run inside SAELens's own virtual environment by tests/test_interchange.py (imports nothing from saelab).

    .venv-saelens/bin/python tests/saelens_roundtrip.py EXPORT_DIR X.safetensors OUT.safetensors META.json [...]

Loads EXPORT_DIR with ``sae_lens.SAE.load_from_disk``, encodes and decodes X, and writes the
feature activations, the reconstruction and the loaded config's metadata; more groups of four
arguments do the same for further exports in the one process (SAELens takes seconds to import).
"""

import json
import sys

import torch
from sae_lens import SAE
from safetensors.torch import load_file, save_file


def main() -> None:
    args = sys.argv[1:]
    for i in range(0, len(args), 4):
        roundtrip(*args[i : i + 4])


def roundtrip(export: str, x_file: str, out: str, meta: str) -> None:
    sae = SAE.load_from_disk(export, device="cpu")
    x = load_file(x_file)["x"]
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
    save_file({"f": f.contiguous(), "x_hat": x_hat.contiguous()}, out)
    md = sae.cfg.metadata
    with open(meta, "w") as fh:
        json.dump(
            {
                "architecture": sae.cfg.architecture(),
                "class": type(sae).__name__,
                **{k: getattr(md, k, None) for k in ("hook_name", "model_name", "context_size", "sae_lens_version")},
            },
            fh,
        )


if __name__ == "__main__":
    main()
