"""Teachers of the retriever: candidate lists in, the distributions it is distilled toward out.

    scorers.py   raw scores of a list by each teacher (BM25, a retriever, a frozen re-ranker, stored, noise)
    ensemble.py  per-list normalisation and the ensemble of soft targets (log-probabilities), attached to lists
    check.py     every teacher and the ensemble measured beside the student on held-out queries first
    targets.py   build_targets: the one place both `rocketkd train` and the pipeline turn lists into targets
"""

from rocketkd.teachers.check import (
    ENSEMBLE,
    MAX_MEMBERS,
    EnsembleChoice,
    TeacherReport,
    check_ensemble,
    check_teachers,
    rerank_ndcg,
)
from rocketkd.teachers.ensemble import (
    COMBINATIONS,
    NORMALIZATIONS,
    attach_teacher_scores,
    combine_logprobs,
    ensemble_logprobs,
    member_logprobs,
    normalize,
)
from rocketkd.teachers.scorers import (
    BM25Scorer,
    RandomScorer,
    RerankerScorer,
    RetrieverScorer,
    Scorer,
    StoredScorer,
    scores_on_candidates,
)
from rocketkd.teachers.targets import (
    MEMBERS,
    HeldOut,
    Targets,
    apply_ensemble,
    build_targets,
    member_scorer,
    student_spread,
    teacher_lists,
    teachers_rejected,
)

__all__ = [
    "COMBINATIONS",
    "ENSEMBLE",
    "MAX_MEMBERS",
    "MEMBERS",
    "NORMALIZATIONS",
    "BM25Scorer",
    "EnsembleChoice",
    "HeldOut",
    "RandomScorer",
    "RerankerScorer",
    "RetrieverScorer",
    "Scorer",
    "StoredScorer",
    "TeacherReport",
    "Targets",
    "apply_ensemble",
    "attach_teacher_scores",
    "build_targets",
    "check_ensemble",
    "check_teachers",
    "combine_logprobs",
    "ensemble_logprobs",
    "member_logprobs",
    "member_scorer",
    "normalize",
    "rerank_ndcg",
    "scores_on_candidates",
    "student_spread",
    "teacher_lists",
    "teachers_rejected",
]
