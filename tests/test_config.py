import pytest
from pydantic import ValidationError

from saelab.config import SAEConfig, load_params, parse_params
from saelab.section import ConfigError


def test_repo_params_are_valid():
    """The committed params.yaml validates."""
    p = load_params("params.yaml")
    assert p.activations.hook == "blocks.0.mlp.hook_post"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"sae": {"l1_coeff": -1}}, "sae.l1_coeff: -1 must be greater than 0"),
        ({"sae": {"batch_size": 0}}, "sae.batch_size: 0 must be greater than 0"),
        ({"lm": {"d_model": -8}}, "lm.d_model: -8 must be greater than 0"),
        ({"activations": {"dtype": "fp8"}}, "activations.dtype: 'fp8' must be 'fp16', 'bf16' or 'fp32'"),
        ({"sae": {"l1_coef": 1.0}}, "sae.l1_coef: unknown key"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"text": {"source": "web"}}, "text.source: 'web' must be 'python-stdlib', 'dir:<path>' or 'hf:<dataset>'"),
        ({"lm": {"d_model": 130, "n_heads": 4}}, "divisible by lm.n_heads"),
        ({"tokens": {"n_ctx": 256}}, "tokens.n_ctx (256) must be <= lm.n_ctx (128)"),
        ({"splice": {"prompt_tokens": 100, "new_tokens": 40}}, "must be <= lm.n_ctx (128), the LM's context"),
        ({"splice": {"prompt_tokens": 200}}, "splice.prompt_tokens (200) must be <= tokens.n_ctx (128)"),
        ({"sae": {"lr": "fast"}}, "sae.lr: 'fast'"),
        (
            {"sae": {"topk": {"k": 4, "k_anneal_frac": 0.5}}},
            "sae.topk: k_anneal_frac (0.5) has no effect",
        ),  # no dict dump
    ],
)
def test_bad_values_name_key_value_and_rule(raw, message):
    """Each bad value gets one message naming the key, the value and what is allowed."""
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_missing_params_file(tmp_path):
    """A missing params file is a clear ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_sections_are_frozen():
    """Configs are immutable once validated."""
    p = parse_params({})
    with pytest.raises(ValidationError, match="frozen"):
        p.sae.l1_coeff = 3.0


def test_code_defaults_are_params_yaml():
    """Each config default equals params.yaml's value, so the code and the file never disagree."""
    from pathlib import Path

    from saelab.config import Params, load_params

    committed = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert committed.model_dump() == Params().model_dump()


def test_stage_prints_one_line_for_expected_faults_and_a_traceback_for_bugs(tmp_path, capsys):
    """run_stage turns a SaelabError into one line and exit 2; any other exception keeps its traceback."""
    import argparse

    import pytest

    from saelab.errors import InputError
    from saelab.stage import run_stage

    (tmp_path / "params.yaml").write_text("{}\n")
    args = argparse.Namespace(params=str(tmp_path / "params.yaml"))
    with pytest.raises(SystemExit) as exit_info:
        with run_stage("t", args):
            raise InputError("bad thing; fix it")
    assert exit_info.value.code == 2
    with pytest.raises(ValueError, match="numpy-style bug"):
        with run_stage("t", args):
            raise ValueError("numpy-style bug")


def test_training_options_added_later_are_saved_only_when_on():
    """k annealing and JumpReLU's b_dec_init are written to saved configs only when switched on, so the SAEs
    saved before they existed keep byte-identical files; when on they are recorded and the SAE agrees."""
    from saelab.registry import build

    off = SAEConfig(architecture="topk").model_dump()
    assert "k_anneal_start" not in off["topk"] and "k_anneal_frac" not in off["batchtopk"]
    assert "b_dec_init" not in off["jumprelu"]
    for arch, section in (
        ("batchtopk", {"k_anneal_start": 64, "k_anneal_frac": 0.5}),
        ("jumprelu", {"b_dec_init": "zero"}),
    ):
        cfg = SAEConfig(architecture=arch, **{arch: section})
        assert section.items() <= cfg.model_dump()[arch].items()
        assert build(cfg, 16).arch_params() == cfg.arch_params()


def test_k_anneal_must_start_at_or_above_k_and_end_before_training_does():
    with pytest.raises(ValueError, match="k_anneal_start"):
        SAEConfig(architecture="topk", topk={"k": 32, "k_anneal_start": 16})
    with pytest.raises(ValueError, match="k_anneal_frac"):
        SAEConfig(architecture="topk", topk={"k": 4, "k_anneal_start": 16, "k_anneal_frac": 1.0})


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_k_anneal_frac_without_a_start_is_refused(arch):
    """A fraction set without k_anneal_start would be silently ignored: refused, naming both keys."""
    with pytest.raises(ValueError, match="k_anneal_frac .* without k_anneal_start"):
        SAEConfig(architecture=arch, **{arch: {"k": 4, "k_anneal_frac": 0.5}})
    SAEConfig(
        architecture=arch, **{arch: {"k": 4, "k_anneal_frac": 0.8}}
    )  # the default value, as params.yaml writes it


def test_architecture_sections_are_checked_where_saes_are_imported():
    """Stages before train (no saelab.saes import) accept the sae.<arch> sections unchecked; once saelab.saes
    is imported (train and every later stage) a bad value in them is refused."""
    import subprocess
    import sys

    code = (
        "from saelab.config import parse_params\n"
        "raw = {'sae': {'topk': {'k': -1}}}\n"
        "parse_params(raw)\n"
        "print('deferred ok')\n"
        "import saelab.saes\n"
        "try:\n"
        "    parse_params(raw)\n"
        "except Exception as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "deferred ok" in out and "sae.topk.k: -1" in out


@pytest.mark.parametrize(
    "acts, lm, message",
    [
        ({"extra_hooks": "blocks.1.mlp.hook_post"}, {}, "must be a list of hook names"),
        ({"extra_hooks": ["blocks.1.mlp.post"]}, {"n_layers": 2}, "is not a hook name of the form blocks.<layer>"),
        ({"extra_hooks": ["blocks.x.mlp.hook_post"]}, {"n_layers": 2}, "is not a hook name of the form"),
        ({"extra_hooks": ["blocks.1.mlp.hook_post"] * 2}, {"n_layers": 2}, "lists a hook twice"),
        ({"extra_hooks": ["blocks.01.mlp.hook_post"]}, {"n_layers": 2}, "is not a hook name of the form"),
        ({"extra_hooks": ["blocks.1.hook_resid_mid"]}, {"n_layers": 2}, "aliases it to ln2.hook_in"),
        ({"extra_hooks": ["blocks.0.mlp.hook_post"]}, {}, "which is activations.hook already: drop it"),
        ({"extra_hooks": ["blocks.1.mlp.hook_post"]}, {}, "activations.extra_hooks: blocks.1.mlp.hook_post is in"),
        ({"extra_hooks": ["blocks.1.mlp.hook_post"]}, {}, "lm.n_layers: 1 (blocks 0..0): raise lm.n_layers"),
        ({"hook": "blocks.3.mlp.hook_post", "extra_hooks": ["blocks.1.mlp.hook_post"]}, {"n_layers": 2},
         "activations.hook: blocks.3.mlp.hook_post is in block 3"),
    ],
)  # fmt: skip
def test_malformed_site_lists_are_refused_at_params_load(acts, lm, message):
    """activations.extra_hooks: a list of distinct supported hook names, apart from activations.hook, each in a
    block the embedded LM has (checked at params load, before any stage starts work)."""
    with pytest.raises(ConfigError) as err:
        parse_params({"activations": acts, "lm": lm})
    assert message in str(err.value)


def test_sites_and_site_params():
    """hooks lists the root site first; site_params gives one site's activations params, or refuses a non-site."""
    from saelab.config import site_params

    p = parse_params({"lm": {"n_layers": 2}, "activations": {"extra_hooks": ["blocks.1.mlp.hook_post",
                                                                          "blocks.0.hook_resid_post"]}})  # fmt: skip
    acts = p.activations
    assert acts.hooks == ("blocks.0.mlp.hook_post", "blocks.1.mlp.hook_post", "blocks.0.hook_resid_post")
    assert site_params(acts, None) is acts and site_params(acts, acts.hook) is acts
    one = site_params(acts, "blocks.1.mlp.hook_post")
    assert one.hook == "blocks.1.mlp.hook_post" and set(one.hooks) == set(acts.hooks)
    assert one.model_copy(update={"hook": acts.hook, "extra_hooks": acts.extra_hooks}) == acts  # only the site moved
    with pytest.raises(ConfigError, match="add it to activations.extra_hooks"):
        site_params(acts, "blocks.1.hook_resid_post")
