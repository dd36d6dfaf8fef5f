"""Suite-wide isolation: the tests see nothing of the caller's environment outside the venv.

The CLI keeps JAX's persistent compilation cache under $COVSIM_CACHE_DIR (default
~/.cache/covsim): the suite points it at a folder of its own, fresh for each session, so a
cache left by earlier runs (or a user's) can neither speed up nor change what is tested.
Subprocesses started by tests inherit it through the environment.
"""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _own_compile_cache(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("COVSIM_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    os.environ["COVSIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("covsim-cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
