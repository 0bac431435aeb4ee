"""The activation-only pass (saelab.data.hooks.activation, hooks_activations): the full pass's values, from a pass
that stops at the hook, so that nothing after it runs."""

import torch

from saelab.data import lm
from saelab.data.hooks import activation, capture, hooks_activations, valid_hooks
from tests.conftest import TINY_LM


def _model(n_layers: int):
    torch.manual_seed(0)
    return lm.build_model(lm.tl_config(TINY_LM.model_copy(update={"n_layers": n_layers})))


def _fired(model):
    """Record, in order, every hook point module that runs (torch forward hooks, so TL's own hooks are untouched)."""
    fired, handles = [], []
    for point in {id(p): p for p in model.hook_dict.values()}.values():
        handles.append(point.register_forward_hook(lambda mod, args, out: fired.append(mod)))
    return fired, handles


def test_activation_has_the_full_passes_values_and_runs_nothing_after_the_hook():
    """Every supported hook of a 2-layer LM, the last block's included: the stopped pass gives the full pass's
    activation bit for bit, and the hook points that run are the full pass's up to the hook and no further (no rest
    of the block, no final norm, no unembedding)."""
    model = _model(2)
    tokens = torch.randint(0, TINY_LM.vocab_size, (3, TINY_LM.n_ctx))
    fired, handles = _fired(model)
    with torch.no_grad():
        for hook in valid_hooks(2):
            fired.clear()
            full = capture(model, tokens, hook)[1]
            ran_full = list(fired)
            fired.clear()
            got = activation(model, tokens, hook)
            assert torch.equal(got, full), hook
            target = model.hook_dict[hook]
            end = next(i for i, m in enumerate(ran_full) if m is target) + 1
            assert [id(m) for m in fired] == [id(m) for m in ran_full[:end]], hook
            assert end < len(ran_full), hook  # something after the hook was skipped: the unembedding at least
    for h in handles:
        h.remove()


def test_several_hooks_stop_after_the_last_to_fire_and_leave_no_hooks_behind():
    """Hooks asked out of order and repeated: each gets the full pass's values, the pass ends at the last of them to
    fire (blocks.1.hook_resid_pre, so block 1 never runs), and the model is as before: the same logits, no hooks."""
    model = _model(2)
    tokens = torch.randint(0, TINY_LM.vocab_size, (2, TINY_LM.n_ctx))
    asked = ["blocks.1.hook_resid_pre", "blocks.0.mlp.hook_post", "blocks.0.mlp.hook_post"]
    with torch.no_grad():
        logits_before = model(tokens)
        fired, handles = _fired(model)
        got = hooks_activations(model, tokens, asked)
        ran = list(fired)
        fired.clear()
        model(tokens)
        ran_full = list(fired)
        for h in handles:
            h.remove()
        assert set(got) == set(asked)
        for hook in asked:
            assert torch.equal(got[hook], capture(model, tokens, hook)[1]), hook
        last = model.hook_dict["blocks.1.hook_resid_pre"]
        end = next(i for i, m in enumerate(ran_full) if m is last) + 1
        assert [id(m) for m in ran] == [id(m) for m in ran_full[:end]] and end < len(ran_full)
        assert torch.equal(model(tokens), logits_before)  # nothing left behind by the stop
    assert all(not p._forward_hooks for p in model.hook_dict.values())  # torch's own registry: TL removed its hooks
