"""SAE architectures: the interface (:mod:`.base`), the registry (:mod:`saelab.registry`) and one module per
architecture, each holding its class, its params section and its sparsity knob.

Importing this package registers every built-in architecture, in the order params.yaml lists their
sections. Adding one is a new module here (or anywhere: a class with ``@register``), imported below, and
its section in params.yaml; nothing else changes (docs/contributing.md).
"""

# isort: off  (registration order = the order of the sae sections in saved configs)
from saelab.saes import standard, standard_april, topk, batchtopk, jumprelu  # noqa: F401, I001

# isort: on
from saelab.saes.base import SAE, SAEOutput, TrainOutput
from saelab.registry import REGISTRY, build, get, mark_builtins_loaded, register

mark_builtins_loaded()
BUILTINS = tuple(REGISTRY)  # ("standard", "standard_april", "topk", "batchtopk", "jumprelu")

__all__ = ["BUILTINS", "REGISTRY", "SAE", "SAEOutput", "TrainOutput", "build", "get", "register"]
