"""covsim.plots: quantiles with NaN/inf, band plots that never crash, exact fits, atomic saves,
and the generic figure of a sweep directory (synthetic results, no JAX)."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import tiny  # noqa: F401  (registers the "toy" task kind)

from covsim import plots, stats, style
from covsim.config import load_config
from covsim.fileio import TMP_PREFIX
from covsim.results import RunResult
from covsim.sweep import run_sweep

PNG = b"\x89PNG\r\n\x1a\n"


def test_quantiles_match_numpy_on_finite_data():
    rng = np.random.default_rng(0)
    v = rng.normal(size=37)
    q = [0.0, 1 / 16, 0.5, 15 / 16, 1.0]
    np.testing.assert_allclose(plots.quantiles(v, q), np.quantile(v, q), rtol=1e-12)


def test_quantiles_drop_nan_and_keep_inf_on_top():
    v = [3.0, np.nan, 1.0, np.inf, 2.0]  # sorted without NaN: 1, 2, 3, inf
    med, lo, top = plots.quantiles(v, [0.5, 0.0, 1.0])
    assert med == 2.5 and lo == 1.0 and top == math.inf
    # a quantile between a finite value and inf interpolates towards inf
    assert plots.quantiles(v, [0.9])[0] == math.inf
    assert np.isnan(plots.quantiles([np.nan, np.nan], [0.5])).all()
    assert plots.quantiles([np.inf, np.inf], [0.5])[0] == math.inf  # no inf − inf = NaN


def _frame():
    """Two groups × 3 x-values × 4 seeds; group H=2 has a NaN seed and an infinite median."""
    rows = []
    for H in (2, 4):
        for x in (1, 10, 100):
            for s in range(4):
                y = H * x**-0.5 * (1 + 0.1 * s)
                if H == 2 and x == 10 and s == 0:
                    y = np.nan  # diverged seed
                if H == 2 and x == 100 and s >= 1:
                    y = np.inf  # three of four seeds give KL = inf
                rows.append({"task.H": H, "step": x, "seed": s, "kl": y})
    return pd.DataFrame(rows)


def test_summarize_medians_counts_and_infinite_medians():
    s = plots.summarize(_frame(), "step", "kl", by="task.H")
    assert list(s.columns) == ["task.H", "step", "median", "lo", "hi", "n"]
    row = s[(s["task.H"] == 4) & (s["step"] == 1)].iloc[0]
    assert row["median"] == pytest.approx(4 * 1.15) and row["n"] == 4
    assert s[(s["task.H"] == 2) & (s["step"] == 10)]["n"].item() == 3  # NaN dropped
    assert s[(s["task.H"] == 2) & (s["step"] == 100)]["median"].item() == math.inf


@pytest.mark.parametrize("logy", [False, True])
def test_band_plot_draws_lines_bands_and_inf_markers(logy):
    fig, ax = plt.subplots()
    s = plots.band_plot(ax, _frame(), "step", "kl", by="task.H", logy=logy, marker=".")
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["H = 2", "H = 4"] and "median = ∞ (at the top)" in labels
    inf_marks = [
        ln for ln in ax.lines if ln.get_marker() == plots.INF_MARKER and len(ln.get_xdata())
    ]
    assert len(inf_marks) == 1 and list(inf_marks[0].get_xdata()) == [100.0]
    assert len(ax.collections) >= 2  # a band per group
    assert np.isfinite(ax.get_ylim()).all()  # inf never reaches the limits
    assert len(s) == 6
    plt.close(fig)


def test_band_plot_single_line_and_all_nan_column():
    df = pd.DataFrame({"step": [0, 0, 1, 1], "kl": [np.nan] * 4, "ce": [1.0, 2.0, 0.0, 0.5]})
    fig, ax = plt.subplots()
    s = plots.band_plot(ax, df, "step", "kl", label="kl")
    assert s["median"].isna().all()
    s = plots.band_plot(ax, df, "step", "ce", logy=True, label="ce")  # a 0 on a log axis
    assert s["median"].tolist() == [1.5, 0.25]
    with pytest.raises(KeyError, match="no column"):
        plots.band_plot(ax, df, "step", "cov@16")
    plt.close(fig)


def test_fits_recover_exact_laws_and_skip_bad_points():
    x = np.array([1.0, 2, 4, 8, 16, 0, 5])
    y = 3.0 * x**2.5
    y[-1] = np.inf  # dropped, as is x = 0 on log axes
    slope, icpt, r2 = stats.loglog_fit(x, y)
    assert slope == pytest.approx(2.5, abs=1e-12) and icpt == pytest.approx(math.log(3), abs=1e-12)
    assert r2 == pytest.approx(1.0, abs=1e-12)
    slope, icpt, r2 = stats.linear_fit([0, 1, 2, np.nan], [1.0, 3.0, 5.0, 7.0])
    assert (slope, icpt, r2) == pytest.approx((2.0, 1.0, 1.0), abs=1e-12)
    # noisy data: R² strictly below 1
    assert stats.linear_fit([0, 1, 2, 3], [0.0, 1.0, 1.0, 3.0])[2] < 1
    assert all(math.isnan(v) for v in stats.loglog_fit([1.0], [2.0]))
    assert all(math.isnan(v) for v in stats.linear_fit([2.0, 2.0], [1.0, 3.0]))
    with pytest.raises(ValueError, match="one length"):
        stats.linear_fit([1, 2], [1, 2, 3])


def test_save_is_atomic_png_and_closes(tmp_path):
    fig, ax = plt.subplots()
    plots.theory_line(ax, [1, 2], [1, 2], "y = x")
    assert ax.lines[0].get_linestyle() == "--"
    out = plots.save(fig, tmp_path / "sub" / "f.png")
    assert out.read_bytes()[:8] == PNG
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in out.parent.iterdir()] == ["f.png"]  # no temp file left
    with pytest.raises(ValueError, match="suffix"):
        plots.save(plt.figure(), tmp_path / "nosuffix")


TOY = """
[experiment]
name = "toy"
[task]
kind = "toy"
H = 4
[model]
kind = "tabular"
[optim]
name = "sgd"
lr = 0.1
[train]
steps = 20
batch_size = 4
n_train = 10
eval_every = 10
eval_samples = 100
Ns = [2, 16]
[sweep]
seeds = 3
[sweep.axes]
"task.H" = [4, 8]
"optim.lr" = [0.1, 0.2]
"""


def _toy_cell(cfg, cell):
    """Synthetic records: KL ∝ H / (1 + step), one diverged (NaN) seed, Cov_16 = 0 at the end."""
    H, (seed,) = cfg.task.H, cell.seeds
    recs = []
    for step in (0, 10, 20):
        kl = H / (1 + step) * (1 + 0.1 * seed) if seed != 2 or H != 8 else math.nan
        cov16 = 0.0 if step == 20 else kl / 100
        recs.append(
            {"step": step, "seed": seed, "kl": kl, "ce": kl + 1, "cov": {2: kl / 10, 16: cov16}}
        )
    return RunResult(recs)


def test_plot_run_on_a_sweep_dir(tmp_path):
    (tmp_path / "toy.toml").write_text(TOY)
    cfg = load_config(tmp_path / "toy.toml", profile=None)
    run_sweep(cfg, _toy_cell, tmp_path / "sweep", progress=False)
    assert plots.sweep_axes(tmp_path / "sweep") == ["task.H", "optim.lr"]
    out, profile = plots.plot_run(tmp_path / "sweep", tmp_path / "figs")
    assert out == tmp_path / "figs" / "sweep.png" and out.read_bytes()[:8] == PNG
    assert profile == tmp_path / "figs" / "sweep_profile.png"
    assert not list((tmp_path / "figs").glob(TMP_PREFIX + "*"))
    pdfs = plots.plot_run(tmp_path / "sweep", tmp_path / "figs", fmt="pdf")
    assert [p.suffix for p in pdfs] == [".pdf", ".pdf"] and pdfs[0].read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="fmt must be one of"):
        plots.plot_run(tmp_path / "sweep", tmp_path / "figs", fmt="jpg")
    with pytest.raises(FileNotFoundError):
        plots.plot_run(tmp_path / "nothing", tmp_path / "figs")


def test_groups_are_ordered_by_value_not_text():
    df = pd.DataFrame({"task.H": [16, 8, 32, 8], "x": ["b", "a", "a", "b"]})
    labels = plots._group_labels(df, ["task.H", "x"])
    assert list(labels.categories) == ["H=8, x=a", "H=8, x=b", "H=16, x=b", "H=32, x=a"]


@pytest.mark.parametrize("n, q, text", [(1, (0.0, 1.0), "no band"), (2, (0.0, 1.0), "min–max"),
                                        (15, (0.0, 1.0), "min–max"),
                                        (16, (1 / 16, 15 / 16), "1/16–15/16 quantiles")])
def test_the_band_says_what_it_is(n, q, text):
    got_q, label = style.band(n)
    assert got_q == q and text in label


def test_the_cli_offers_the_styles_formats():
    from covsim import cli

    assert cli.FIGURE_FORMATS == style.FORMATS
