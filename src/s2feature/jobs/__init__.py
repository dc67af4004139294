"""Jobs that run beside the consumer loop (SPEC §10): the recompute of a range from the lake
(`recompute`), its tasks kept in the store and resumed (`tasks`), run in a child process
(`task_process`) or on the registry's thread (`task_runner`), the scheduler of periodic jobs
with its Redis run lock (`schedule`) and the hourly gap fill (`gap_fill`)."""

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
