"""covsim: simulate the coverage principle (Chen et al., arXiv 2510.15020).

Where things are (imports point downwards only):
    covsim.tasks      ground truths π_D with exact log-probabilities (sample + score)
    covsim.metrics    the coverage profile Cov_N, KL/CE, Pass@N, the paper's bounds
    covsim.models     learners: LogLinear, Tabular, Transformer
    covsim.optim      the optimizers the paper studies; covsim.mle: exact MLE
    covsim.train      the trainer (a pure function of a key); covsim.evaluate: checkpoint scores
    covsim.select     checkpoint selection; covsim.decode: sampling, Best-of-N
    covsim.config / sweep / results / experiment / claims / plots / cli: experiments and I/O
    covsim.registry   tasks, models, optimizers, runners by name: extend them with
                      covsim.register_task / register_model / register_optimizer /
                      covsim.runners.register_runner
"""

from covsim.registry import register_model, register_optimizer, register_task


def _version() -> str:
    """The installed distribution's version: pyproject.toml is its one source."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("covsim")
    except PackageNotFoundError:  # a source tree on sys.path, never installed
        return "0+unknown"


__version__ = _version()
__all__ = ["register_model", "register_optimizer", "register_task"]
