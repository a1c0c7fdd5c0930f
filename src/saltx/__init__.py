"""saltx: multi-modal, multi-task transformer jet taggers from ATLAS-style h5 files."""

__version__ = "0.1.0"
