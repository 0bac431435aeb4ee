"""The reference post's twelve open questions, one module each (docs/questions.md). Importing this package
registers them in order; the answer stage runs ``QUESTIONS`` one after the other on one shared context."""

# isort: off  (registration order = the order of answers.json)
from research.questions.answers import (  # noqa: F401, I001
    q01_direction,
    q02_orthogonal,
    q03_resampling,
    q04_dying,
    q05_cluster_ablation,
    q06_bias_supersets,
    q07_hook,
    q08_encoder,
    q09_shrinkage,
    q10_drop_k,
    q11_width,
    q12_consensus,
)

# isort: on
from research.questions import registry
from research.questions.registry import PARAMS
from research.questions.answers.base import HEADLINE, QUESTIONS, Context, cluster_stats, question, summary
from research.questions.answers.q01_direction import direction_origin
from research.questions.answers.q01_direction import top_projections
from research.questions.answers.q04_dying import density_curve
from research.questions.answers.q04_dying import watch
from research.questions.answers.q04_dying import held_dying
from research.questions.answers.q06_bias_supersets import firing_sets
from research.questions.answers.q06_bias_supersets import superset_shares
from research.questions.answers.q08_encoder import enc_dec_profile
from research.questions.answers.q09_shrinkage import finetune
from research.questions.answers.q10_drop_k import drop_lowest
from research.questions.answers.q10_drop_k import keep_top
from research.questions.answers.q11_width import splitting
from research.questions.answers.q12_consensus import consensus
from research.questions.answers.q12_consensus import feature_profile
from research.questions.answers.q12_consensus import compare_groups

registry.mark_loaded()  # every question is registered: params.yaml's answer sections are checked from here on

__all__ = [
    "Context",
    "HEADLINE",
    "PARAMS",
    "QUESTIONS",
    "cluster_stats",
    "compare_groups",
    "consensus",
    "density_curve",
    "direction_origin",
    "drop_lowest",
    "enc_dec_profile",
    "feature_profile",
    "finetune",
    "firing_sets",
    "held_dying",
    "keep_top",
    "question",
    "splitting",
    "summary",
    "superset_shares",
    "top_projections",
    "watch",
]
