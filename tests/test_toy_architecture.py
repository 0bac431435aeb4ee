"""Adding an architecture is one new module: a toy one, registered from this test module with no edit of the
package, is configured, trained, evaluated, saved, loaded, exported and swept like the built-ins."""

import json

import pytest
import torch
from pydantic import Field

from research import frontier
from saelab import registry
from saelab.config import EvaluateConfig, parse_params
from saelab.data.lm import load_lm
from saelab.errors import InputError
from saelab.eval.evaluate import evaluate
from saelab.interop.saelens import export_saelens
from saelab.saes.base import SAE, TrainOutput, fires, l0, mse_loss
from saelab.section import ConfigError, Section
from saelab.training.trainer import Trainer


class ToyParams(Section):
    """``sae.toy``: a ReLU SAE whose sparsity term is weighted by its own knob."""

    weight: float = Field(0.1, gt=0)


class Toy(SAE):
    """ReLU SAE, loss = mse + weight · Σ_i f_i (no unit-norm decoder)."""

    architecture = "toy"
    Params = ToyParams
    COMMON_PARAMS = ()
    KNOB = ("toy", "weight")
    TERMS = ("l1",)
    unit_norm_decoder = False

    def __init__(self, d_in, d_sae, seed=0, weight=0.1):
        self.weight = weight
        super().__init__(d_in, d_sae, seed)

    def arch_params(self):
        return {"weight": self.weight}

    def train_forward(self, x, progress):
        f = self.encode(x)
        mse = mse_loss(self.decode(f), x)
        l1 = f.sum(-1).mean()
        return TrainOutput(mse + self.weight * l1, mse, (l1,), fires(f), l0(f))


@pytest.fixture
def toy():
    """Toy registered for one test, then removed, so other tests see the built-ins only."""
    registry.register(Toy)
    yield Toy
    del registry.REGISTRY["toy"]


def _params(**sae):
    return parse_params(
        {
            "sae": {
                "architecture": "toy",
                "expansion": 2,
                "batch_size": 32,
                "n_tokens": 32 * 20,
                "lr_warmup_tokens": 0,
                "checkpoint_every": 0,
                **sae,
            }
        }
    )


def test_toy_section_is_validated_like_a_builtin(toy):
    """params.yaml accepts sae.toy once Toy is registered, refuses a bad value in it by key, and dumps it."""
    cfg = _params(toy={"weight": 0.3}).sae
    assert cfg.section().weight == 0.3 and cfg.arch_params() == {"weight": 0.3}
    assert cfg.model_dump()["toy"] == {"weight": 0.3}
    with pytest.raises(ConfigError, match=r"sae.toy.weight: -1"):
        _params(toy={"weight": -1})


def test_toy_is_refused_when_not_registered():
    """Without the registration the same params are refused, naming the registered architectures."""
    with pytest.raises(ConfigError, match="registered architecture"):
        _params()


def test_toy_trains_evaluates_saves_exports_and_sweeps(toy, tiny_lm, tmp_path):
    """The Trainer, evaluate, save/load, the SAELens export and the frontier's knob lookup take Toy as it is."""
    path, rows = tiny_lm
    lm = load_lm(path)
    cfg = _params(toy={"weight": 0.01}).sae
    sae = registry.build(cfg, 64)
    g = torch.Generator().manual_seed(0)
    trainer = Trainer(sae, cfg, torch.device("cpu"))
    state = trainer.run(lambda skip: (torch.randn(32, 64, generator=g) for _ in range(20)))
    assert state.step == 20
    ev = EvaluateConfig(max_tokens=64, ce_max_tokens=32, batch_rows=4)
    m, _ = evaluate(
        lm.model, sae, rows, "blocks.0.mlp.hook_post", torch.zeros(64), ev, "cpu", lm.bos_token_id, progress=False
    )
    assert 0 < m["l0"] <= 128 and m["mse"] > 0
    sae.save(tmp_path / "sae", {"hook": "blocks.0.mlp.hook_post"})
    again, meta = SAE.load(tmp_path / "sae")
    assert type(again) is Toy and meta["arch_params"] == {"weight": 0.01}
    torch.testing.assert_close(again.W_enc, sae.W_enc)
    export_saelens(sae, tmp_path / "saelens", "blocks.0.mlp.hook_post", "tiny", 16)
    assert json.loads((tmp_path / "saelens/cfg.json").read_text())["metadata"]["saelab_architecture"] == "toy"
    assert frontier.knob({"architecture": "toy", "toy": {"weight": 0.05}}) == ("toy", "toy.weight", 0.05)
    assert registry.knob_params("toy", 0.05, {}) == {"toy": {"weight": 0.05}}


def test_frontier_refuses_an_unknown_architecture():
    """A run of an unregistered architecture is refused, never read with a default knob."""
    with pytest.raises(InputError, match="unknown SAE architecture 'nope'"):
        frontier.knob({"architecture": "nope", "l1_coeff": 1.0})


def test_a_class_without_its_own_knob_is_not_registered():
    """register() refuses a class that inherits its KNOB instead of declaring it (a silent l1_coeff default)."""

    class NoKnob(SAE):
        architecture = "noknob"
        Params = None
        COMMON_PARAMS = ()

    with pytest.raises(TypeError, match="KNOB"):
        registry.register(NoKnob)
    assert "noknob" not in registry.REGISTRY
