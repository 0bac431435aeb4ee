"""Hook names, width checks, and the two hook functions every LM pass goes through.

* :func:`capture` runs the LM and returns its logits plus the activation at one hook; :func:`activation` and
  :func:`hooks_activations` return the activations alone, from a pass that stops at the last hook asked for;
* :func:`splice` builds a hook that replaces that activation (reconstruction, zero, mean),
  leaving positions outside the SAE's domain clean (BOS under ``activations.bos: exclude``;
  definitions: docs/metrics.md, "BOS policy").
"""

from __future__ import annotations

import torch

from transformer_lens.model_bridge.exceptions import StopAtLayerException

from saelab.config import HOOK_SUFFIXES, unspliceable
from saelab.errors import InputError

def valid_hooks(n_layers: int) -> list[str]:
    return [f"blocks.{layer}.{s}" for layer in range(n_layers) for s in HOOK_SUFFIXES]


def check_hook(hook: str, tl_config: dict) -> tuple[int, int]:
    """Return (layer, width) of ``hook``, or raise listing the valid names."""
    if (why := unspliceable(hook)) is not None:
        raise InputError(f"{hook!r} is not supported: {why}")
    allowed = valid_hooks(tl_config["n_layers"])
    if hook not in allowed:
        raise InputError(f"{hook!r} is not a supported hook of this LM; valid hooks are: {', '.join(allowed)}")
    layer = int(hook.split(".")[1])
    width = tl_config["d_mlp"] if ".mlp.hook_" in hook else tl_config["d_model"]
    return layer, width


def check_sae_width(d_in: int, hook: str, tl_config: dict, where) -> int:
    """Raise unless an SAE of input width ``d_in`` fits ``hook`` of this LM; return the hook's layer."""
    layer, width = check_hook(hook, tl_config)
    if d_in != width:
        raise InputError(f"{where}: SAE d_in is {d_in} but {hook} has width {width}; train the SAE on this LM's activations")
    return layer


def is_mlp_post(hook: str) -> bool:
    return hook.endswith("mlp.hook_post")


def capture(model, tokens: torch.Tensor, hook: str) -> tuple:
    """Run ``model`` on ``tokens`` (B, T); return (its logits, the activation at ``hook`` (B, T, d))."""
    grabbed: dict = {}
    out = model.run_with_hooks(tokens, fwd_hooks=[(hook, grab_into(grabbed, "x"))])
    return out, grabbed["x"]


@torch.no_grad()
def activation(model, tokens: torch.Tensor, hook: str) -> torch.Tensor:
    """The activation at ``hook`` for ``tokens`` (B, T) -> (B, T, d), from a pass that stops at the hook
    (:func:`hooks_activations`)."""
    return hooks_activations(model, tokens, [hook])[hook]


def grab_into(store: dict, key: str):
    """A hook that records the activation it sees as ``store[key]`` and passes it on unchanged."""

    def grab(x, hook):  # noqa: ARG001 - TL passes the HookPoint by keyword
        store[key] = x
        return x

    return grab


@torch.no_grad()
def hooks_activations(model, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
    """Activations at every hook of ``hooks`` for ``tokens`` (B, T), hook -> (B, T, d), from one pass that stops as
    soon as the last of them has fired: nothing after it runs (for an MLP hook of the last block: the rest of the
    block, the final norm and the unembedding). The values are the full pass's, bit for bit (tests/test_hooks.py).

    The stop is TransformerLens's own ``StopAtLayerException``, raised from the hook and caught by
    ``run_with_hooks``, which removes the hooks as usual. Its ``stop_at_layer`` argument cannot do this: it stops
    at the start of a block, so it cannot cut the last block's pass short, and a stop after the last block runs
    the unembedding anyway (TransformerLens 4's bridge ignores a ``stop_at_layer`` of ``n_layers``)."""
    wanted = list(dict.fromkeys(hooks))
    grabbed: dict = {}

    def grab(key: str):
        def hook_fn(x, hook):  # noqa: ARG001 - TL passes the HookPoint by keyword
            grabbed[key] = x
            if len(grabbed) == len(wanted):
                raise StopAtLayerException(x)
            return x

        return hook_fn

    model.run_with_hooks(tokens, fwd_hooks=[(h, grab(h)) for h in wanted])
    return grabbed


def splice(values: torch.Tensor, keep: torch.Tensor | None = None):
    """A hook replacing the activation (B, T, d) by ``values`` (any shape of the same size),
    except at positions where ``keep`` (B, T) is True, which stay clean."""

    def hook(x, hook):  # noqa: ARG001
        v = values.reshape(x.shape).to(x.dtype)
        return v if keep is None else torch.where(keep[..., None], x, v)

    return hook


def covered_positions(tokens: torch.Tensor, exclude_token: int | None) -> torch.Tensor:
    """(B, T) bool: positions inside the SAE's domain (all, or all but ``exclude_token``, the BOS id)."""
    if exclude_token is None:
        return torch.ones_like(tokens, dtype=torch.bool)
    return tokens != exclude_token
