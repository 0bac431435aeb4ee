"""The architecture registry: names to classes. It imports no architecture and no torch.

It lives outside :mod:`saelab.saes` on purpose: importing any module of that package runs its
``__init__``, which imports every built-in architecture, and the stages before ``train`` (text, lm,
tokens, activations) must not depend on architecture code (dvc.yaml would rerun them when an
architecture changes).

An architecture is a subclass of :class:`saelab.saes.base.SAE` that declares

* ``architecture``: its name, the value of ``sae.architecture`` in params.yaml;
* ``Params``: the :class:`saelab.section.Section` model of its own params section ``sae.<name>``
  (``None`` when it has none), whose fields are its constructor's keyword arguments;
* ``COMMON_PARAMS``: keys of the ``sae`` section it also takes (``("l1_coeff",)`` for the L1 ones);
* ``KNOB``: the (section, key) that sets its sparsity, ``(None, "l1_coeff")`` for a top-level key;
  the frontier sweeps it.

and registers with :func:`register`. ``saelab.saes`` imports the built-in ones, so the registry is
complete whenever anything of the package is imported; code outside the package (a test, a
research script) registers its own the same way, and params.yaml then accepts its section.
"""

from __future__ import annotations

from saelab.errors import InputError

REGISTRY: dict[str, type] = {}  # name -> a subclass of saelab.saes.base.SAE
_BUILTINS_LOADED = False


def builtins_loaded() -> bool:
    """Whether ``saelab.saes`` (every built-in architecture) has been imported in this process."""
    return _BUILTINS_LOADED


def mark_builtins_loaded() -> None:
    """Called once by ``saelab.saes`` after registering the built-in architectures."""
    global _BUILTINS_LOADED
    _BUILTINS_LOADED = True


def register(cls: type) -> type:
    """Class decorator: make ``cls`` buildable, loadable, configurable and sweepable by its name."""
    for attr in ("architecture", "Params", "COMMON_PARAMS", "KNOB"):
        if attr not in vars(cls):  # declared by the class itself: an inherited knob would be a silent default
            raise TypeError(f"{cls.__name__} must declare {attr} itself to be registered (saelab.registry)")
    section, key = cls.KNOB
    if section is None and key not in cls.COMMON_PARAMS:
        raise TypeError(f"{cls.__name__}.KNOB names sae.{key}, which is not in its COMMON_PARAMS")
    if section is not None and (
        section != cls.architecture or cls.Params is None or key not in cls.Params.model_fields
    ):
        raise TypeError(f"{cls.__name__}.KNOB {cls.KNOB} is not a field of its own section sae.{cls.architecture}")
    REGISTRY[cls.architecture] = cls
    return cls


def get(name: str) -> type:
    """The class registered as ``name``; an unknown name is refused with the known ones."""
    if name not in REGISTRY:
        raise InputError(f"unknown SAE architecture {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def sections() -> dict[str, type]:
    """``sae.<name>`` params sections of the registered architectures, in registration order."""
    return {name: cls.Params for name, cls in REGISTRY.items() if cls.Params is not None}


def knob(name: str) -> tuple[str | None, str]:
    """(section, key) of the sparsity knob of architecture ``name``; unknown names are refused."""
    return get(name).KNOB


def knob_params(name: str, value, fixed: dict | None = None) -> dict:
    """``sae`` params that set architecture ``name``'s sparsity knob to ``value`` (and ``fixed`` keys of its
    own section): ``{"l1_coeff": v}`` or ``{"topk": {"k": v, **fixed}}``. What a sweep writes."""
    section, key = knob(name)
    if section is None:
        return {key: value}
    return {section: {key: value, **(fixed or {})}}


def build(cfg, d_in: int, seed: int | None = None):
    """The SAE ``cfg`` (an SAEConfig) describes: its architecture, width and params; seeded by ``seed``
    (default: ``cfg.seed``)."""
    return get(cfg.architecture)(d_in, cfg.width(d_in), seed=cfg.seed if seed is None else seed, **cfg.arch_params())
