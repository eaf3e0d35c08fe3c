"""Shared by the tests: what the command lines build, for in-process calls of the stage APIs."""
from submissions.blend import DEFAULT_BLENDS
from submissions.budget import Budget
from submissions.postprocess import Settings


def settings(spec, method=None, trials=200, seed=0, blends=DEFAULT_BLENDS, **budget) -> Settings:
    """What `make submit` builds from its command line (the spec's budgets unless `model_mb=`/`gpu_hours=`)."""
    return Settings(Budget.of(spec, **budget), method, trials, seed, tuple(blends))
