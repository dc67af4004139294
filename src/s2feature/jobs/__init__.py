"""Jobs that run beside the consumer loop: the recompute of a range from the lake (SPEC §10)."""

from s2feature.jobs.recompute import (
    Batch,
    Progress,
    RecomputeError,
    RecomputePlan,
    RecomputeRequest,
    RecomputeResult,
    Resume,
    ResumeRefusedError,
    plan,
    run_recompute,
)

__all__ = [
    "Batch",
    "Progress",
    "RecomputeError",
    "RecomputePlan",
    "RecomputeRequest",
    "RecomputeResult",
    "Resume",
    "ResumeRefusedError",
    "plan",
    "run_recompute",
]
