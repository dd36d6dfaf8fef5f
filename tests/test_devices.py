"""Scaling out: seeds sharded over devices (two CPU devices stand in for a multi-GPU host),
the process executor's one-thread workers, and a real Ray cluster."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tiny import TRAINER

from covsim import devices
from covsim.config import load_config
from covsim.sweep import run_sweep

RUN = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    from flax import nnx
    from covsim.models import Tabular
    from covsim.tasks.markov import MarkovChain
    from covsim.train import TrainSpec, make_train, run_seeds
    task = MarkovChain.random(jax.random.key(0), V=4, H=5)
    spec = TrainSpec(steps=40, batch_size=8, n_train=64, eval_every=20, eval_samples=256,
                     Ns=(2.0, 8.0))
    tr = make_train(task, lambda k: Tabular(task.V, task.H, rngs=nnx.Rngs(k)),
                    optax.adam(0.1), spec)
    out = {}
    for mode in ("loop", "vmap"):
        o = run_seeds(tr, [0, 1, 2], mode=mode)  # 3 seeds on 2 devices: one padded copy
        out[mode] = {"kl": np.asarray(o.metrics.kl).tolist(),
                     "cov": np.asarray(o.metrics.cov).tolist(),
                     "table": np.asarray(o.params["table"][...]).sum(1).tolist()}
    out["devices"] = len(jax.local_devices())
    print(json.dumps(out))
""")


def _run(n_devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    p = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_seeds_sharded_over_two_devices_give_the_one_device_numbers():
    one, two = _run(1), _run(2)
    assert (one["devices"], two["devices"]) == (1, 2)
    for mode in ("loop", "vmap"):  # the device count does not change a seed's numbers
        for field in ("kl", "cov", "table"):
            np.testing.assert_array_equal(np.asarray(two[mode][field]),
                                          np.asarray(one[mode][field]), err_msg=mode + field)
        assert len(two[mode]["kl"]) == 3  # the padded copy is dropped
    np.testing.assert_allclose(one["vmap"]["kl"], one["loop"]["kl"], rtol=1e-5)


def test_host_core_flags(monkeypatch):
    monkeypatch.setattr(devices, "backends_initialised", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert devices.use_host_cores()
    assert os.environ["XLA_FLAGS"] == (
        f"--xla_force_host_platform_device_count={devices.host_cores()}")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3 --foo")
    assert not devices.use_host_cores()  # the user's count is kept
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3 --foo"
    devices.single_thread_worker()  # a worker: one device, one thread, other flags kept
    assert os.environ["XLA_FLAGS"].split() == [
        "--foo", "--xla_force_host_platform_device_count=1",
        "--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]
    monkeypatch.setattr(devices, "backends_initialised", lambda: True)
    monkeypatch.delenv("XLA_FLAGS")
    assert not devices.use_host_cores() and "XLA_FLAGS" not in os.environ  # too late: untouched


def _sweep_cfg(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('[experiment]\nname = "tiny_ray"\nrunner = "train"\n\n[task]\n'
                    'kind = "markov"\nV = 4\nH = 4\n' + TRAINER
                    + '\n[sweep]\nseeds = 2\n\n[sweep.axes]\n"task.H" = [3, 4]\n')
    return load_config(path, profile=None)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_ray_cluster_gives_the_local_results(tmp_path):
    ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed")
    from covsim.cli import _cell_fn
    from covsim.results import read_metrics

    cfg = _sweep_cfg(tmp_path)
    run_sweep(cfg, _cell_fn, tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                                       "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}})
    try:
        manifest = run_sweep(cfg, _cell_fn, tmp_path / "ray", executor="ray", workers=2,
                             progress=False)
    finally:
        ray.shutdown()
    assert [c["status"] for c in manifest["cells"]] == ["done"] * 4
    cols = ["kl", "ce", "cov@2", "cov@8"]
    a = read_metrics(tmp_path / "local").sort_values(["run", "seed", "step"])[cols].to_numpy()
    b = read_metrics(tmp_path / "ray").sort_values(["run", "seed", "step"])[cols].to_numpy()
    np.testing.assert_array_equal(a, b)
