"""Ground-truth tasks π_D: sample exactly, score exactly (see `covsim.tasks.base`)."""

from covsim.tasks.base import Task, all_sequences, exact_joint, inverse_cdf, sample_categorical

__all__ = ["Task", "all_sequences", "exact_joint", "inverse_cdf", "sample_categorical"]
