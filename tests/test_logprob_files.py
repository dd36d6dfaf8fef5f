"""covsim.logprob_files and `covsim coverage`: log-prob files of a model pair read back, and
the report equal to covsim.metrics' functions of the same log-ratios, to the last bit.

The end-to-end case is the one the command exists for: two covsim learners, samples drawn from
the first (the reference), both scored on them and dumped; the command's coverage.json must
hold exactly `coverage_profile` and `kl_with_se` of r = log π_ref − log π_student.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from covsim import metrics as M
from covsim.cli import main
from covsim.decode import sample
from covsim.evaluate import chunked_log_prob
from covsim.logprob_files import (
    LogprobFileError,
    coverage_report,
    log_ratio64,
    read_logprobs,
    read_pair,
    write_logprobs,
)
from covsim.models import Tabular
from covsim.results import from_jsonable
from covsim.tasks.markov import MarkovChain

NS = (2, 4, 16, 256)


@pytest.fixture(scope="module")
def pair():
    """Per-sequence and per-token log-probs of 3000 samples from a reference learner, under it
    and under a second learner (different random init): float32, as a model would give."""
    task = MarkovChain.random(jax.random.key(0), V=4, H=6)
    ref = Tabular(task.V, task.H, init="random", init_scale=1.0, rngs=nnx.Rngs(1))
    student = Tabular(task.V, task.H, init="random", init_scale=1.0, rngs=nnx.Rngs(2))
    x, _ = task.sample(jax.random.key(3), 3000)
    y = sample(ref, x, task.H, jax.random.key(4))
    seq = [np.asarray(chunked_log_prob(m, x, y)) for m in (ref, student)]
    tok = [np.asarray(jnp.take_along_axis(m(x, y), y[..., None], -1)[..., 0]) for m in
           (ref, student)]
    return seq, tok


def _expected(lp_ref, lp_student, Ns=NS, alpha=0.05):
    r = M.log_ratio(jnp.asarray(lp_ref, jnp.float32), jnp.asarray(lp_student, jnp.float32))
    prof = M.coverage_profile(r, jnp.asarray(Ns, jnp.float32), alpha=alpha)
    kl, se = M.kl_with_se(r)
    return prof, float(kl), float(se)


@pytest.mark.parametrize("fmt", [".npy", ".jsonl", ".parquet"])
def test_cli_on_two_learners_dumps_reproduces_the_metrics_exactly(pair, tmp_path, capsys, fmt):
    if fmt == ".parquet":
        pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
    (ref, student), _ = pair
    a, b = write_logprobs(tmp_path / f"ref{fmt}", ref), write_logprobs(tmp_path / f"st{fmt}",
                                                                       student)
    out = tmp_path / "out"
    Ns = ",".join(map(str, NS))
    assert main(["coverage", str(a), str(b), "--Ns", Ns, "--out", str(out)]) == 0
    got = from_jsonable(json.loads((out / "coverage.json").read_text()))
    prof, kl, se = _expected(ref, student)
    assert got["cov"] == np.asarray(prof.cov).tolist()
    assert got["cov_lo"] == np.asarray(prof.lo).tolist()
    assert got["cov_hi"] == np.asarray(prof.hi).tolist()
    assert got["kl"] == kl and got["kl_se"] == se
    assert got["n"] == 3000 and got["N"] == list(map(float, NS))
    N = np.asarray(NS, float)
    np.testing.assert_array_equal(got["bound"], kl / (np.log(N) - 1 + 1 / N))
    assert 0 < kl and 0 < prof.cov[0] < 1  # a real pair: neither covered nor disjoint
    assert (out / "profile.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert f"KL(π_D ‖ π̂) = {kl:.6g}" in printed


def test_per_token_files_are_summed_in_float64(pair, tmp_path):
    _, (tok_ref, tok_student) = pair
    a = write_logprobs(tmp_path / "ref.npy", tok_ref)
    b = write_logprobs(tmp_path / "st.jsonl", tok_student)
    lr, ls = read_pair(a, b)
    np.testing.assert_array_equal(lr, np.sum(tok_ref.astype(np.float64), axis=1))
    np.testing.assert_array_equal(ls, np.sum(tok_student.astype(np.float64), axis=1))
    # NaN in a (n, T) .npy row is padding of a shorter sequence
    padded = tok_ref.astype(np.float64).copy()
    padded[0, 4:] = np.nan
    write_logprobs(tmp_path / "pad.npy", padded)
    got = read_logprobs(tmp_path / "pad.npy").logp
    assert got[0] == np.sum(padded[0, :4]) and np.array_equal(got[1:], lr[1:])


def test_ids_match_rows_across_files_in_any_order(pair, tmp_path):
    (ref, student), _ = pair
    ids = [f"s{i}" for i in range(ref.size)]
    perm = np.random.default_rng(0).permutation(ref.size)
    write_logprobs(tmp_path / "ref.jsonl", ref, ids=ids)
    write_logprobs(tmp_path / "st.jsonl", student[perm], ids=[ids[i] for i in perm])
    lr, ls = read_pair(tmp_path / "ref.jsonl", tmp_path / "st.jsonl")
    np.testing.assert_array_equal(ls, student.astype(np.float64))
    np.testing.assert_array_equal(lr, ref.astype(np.float64))
    write_logprobs(tmp_path / "other.jsonl", student, ids=[f"t{i}" for i in range(ref.size)])
    with pytest.raises(LogprobFileError, match="ids differ"):
        read_pair(tmp_path / "ref.jsonl", tmp_path / "other.jsonl")


def test_the_report_on_an_analytic_case():
    """π_D = Ber(p), π̂ = Ber(q) over one token, samples in their exact proportions: Cov_N is
    the π_D-mass of the outcomes whose ratio is ≥ N, KL the closed form."""
    p, q, n = 0.25, 0.01, 4000
    ones = int(p * n)
    ref = np.log(np.r_[np.full(ones, p), np.full(n - ones, 1 - p)])
    student = np.log(np.r_[np.full(ones, q), np.full(n - ones, 1 - q)])
    rep = coverage_report(ref, student, [2, 25, 26])
    # outcome 1 has ratio p/q = 25 (≥ 2, ≥ 25, < 26); outcome 0 ratio 0.76 (< 1)
    np.testing.assert_allclose(rep.cov, [p, p, 0.0])
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert rep.kl == pytest.approx(kl, rel=1e-5)


def test_zero_probability_and_the_minus_inf_rule(tmp_path):
    ref = np.array([-1.0, -2.0, -np.inf])
    student = np.array([-np.inf, -2.0, -3.0])
    r = log_ratio64(ref, student)
    assert r[0] == np.inf and r[1] == 0 and r[2] == -np.inf
    (tmp_path / "a.jsonl").write_text('{"logp": -1}\n{"logp": "-inf"}\n{"logp": -Infinity}\n')
    assert read_logprobs(tmp_path / "a.jsonl").logp.tolist() == [-1.0, -np.inf, -np.inf]
    rep = coverage_report(ref, student, [2, 1e9])
    assert rep.cov.tolist() == [pytest.approx(1 / 3)] * 2 and rep.kl == np.inf


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("a.txt", "", "unknown format '.txt'"),
        ("a.jsonl", '{"logp": -1}\n{"lp": -2}\n', "row 1 needs exactly one of 'logp'"),
        ("a.jsonl", '{"logp": -1}\nnot json\n', "line 2 is not JSON"),
        ("a.jsonl", '{"logp": NaN}\n', "row 0 has log-prob nan"),
        ("a.jsonl", '{"logp": "x"}\n', "row 0 has a non-number"),
        ("a.jsonl", '{"token_logps": []}\n', "non-empty list"),
        ("a.jsonl", '{"logp": -1, "id": 1}\n{"logp": -1}\n', "row 1 has no id"),
        ("a.jsonl", '{"logp": -1, "id": 1}\n{"logp": -1, "id": 1}\n', "id 1 appears twice"),
        ("a.jsonl", "\n", "no samples"),
        ("a.npy", b"garbage", "not a .npy array"),
    ],
)
def test_bad_files_are_one_line_errors_exit_2(tmp_path, capsys, name, content, match):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    other = write_logprobs(tmp_path / "ok.jsonl", [-1.0, -2.0], ids=[1, 2])
    assert main(["coverage", str(p), str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and "Traceback" not in err


def test_mismatched_sizes_and_bad_options_exit_2(tmp_path, capsys):
    a = write_logprobs(tmp_path / "a.npy", [-1.0, -2.0, -3.0])
    b = write_logprobs(tmp_path / "b.npy", [-1.0, -2.0])
    assert main(["coverage", str(a), str(b)]) == 2
    assert "a.npy has 3 samples" in capsys.readouterr().err
    assert main(["coverage", str(a), str(a), "--Ns", "0.5"]) == 2
    assert "--Ns" in capsys.readouterr().err
    assert main(["coverage", str(a), str(a), "--alpha", "1.5"]) == 2
    assert "--alpha" in capsys.readouterr().err
    assert main(["coverage", str(a), str(tmp_path / "missing.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["coverage", str(a), str(a), "--out", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err.startswith("--out: cannot write to")


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_figure_formats(tmp_path, fmt):
    a = write_logprobs(tmp_path / "a.npy", [-1.0, -2.0, -3.0])
    b = write_logprobs(tmp_path / "b.npy", [-2.0, -2.0, -9.0])
    assert main(["coverage", str(a), str(b), "--out", str(tmp_path), "--format", fmt]) == 0
    head = (tmp_path / f"profile.{fmt}").read_bytes()[:5]
    assert head == (b"%PDF-" if fmt == "pdf" else b"<?xml")
