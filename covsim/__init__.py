"""covsim: simulate the coverage principle (Chen et al., arXiv 2510.15020).

Where things are:
    covsim.tasks    ground truths with exact log-probabilities (sample + score)
    covsim.metrics  the coverage profile Cov_N, KL/CE, Pass@N, the paper's bounds
"""

__version__ = "0.1.0"
