"""saltx: multi-modal, multi-task transformer jet taggers from ATLAS-style h5 files."""

from saltx.engine.threads import openmp_defaults

# OpenMP reads its settings once, when torch loads it: apply saltx's measured defaults
# (idle threads sleep, docs/performance.md "Threads") before anything imports torch.
openmp_defaults()

__version__ = "0.1.0"
