"""Figures from result files only: medians over seeds with quantile bands, fits, theory overlays.

    df = read_metrics("runs/quick/horizon")               # covsim.results
    fig, ax = plt.subplots()
    band_plot(ax, df, "step", "kl", by="task.H")           # median ± (1/16, 15/16) band per H
    slope, icpt, r2 = loglog_fit(df["task.H"], df["kl"])   # log y = slope · log x + icpt
    theory_line(ax, xs, bound, "Prop. 3.1 bound")          # dashed
    save(fig, "figures/horizon.png")                       # atomic, dpi 300, fitted

`plot_run(dir, out_folder)` draws the generic figure of any run or sweep directory (KL, CE and
Cov_N for each N against training step, one line per point of the sweep axes).

Non-finite values: NaN (a diverged run) is dropped; +inf (a model giving probability 0 to a
sample: KL = ∞) is kept in the quantiles and, where a median or band end is infinite, drawn
clipped at the top of the axes with a "▲ = ∞" marker. Non-positive values on a log axis cannot
be drawn and are left out (the returned summary still holds them).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter  # noqa: E402

from covsim import style  # noqa: E402
from covsim.fileio import atomic_write_text  # noqa: E402
from covsim.results import read_metrics, read_summaries  # noqa: E402
from covsim.stats import finals, linear_fit  # noqa: E402

DPI = style.DPI
INF_MARKER = "^"
style.use()

LabelFmt = str | Callable[[str, Any], str]


# ---------------------------------------------------------------------------------------------
# Medians and bands


def quantiles(values: Sequence[float], q: Sequence[float]) -> np.ndarray:
    """Quantiles of `values` with NaN dropped and +inf kept as larger than every finite value.

    A quantile that falls on or between infinite values is +inf (linear interpolation towards
    ∞). All-NaN input gives NaN for every q."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return np.full(len(q), np.nan)
    v = np.sort(v)
    pos = np.asarray(q, dtype=np.float64) * (v.size - 1)
    lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
    frac = pos - lo
    with np.errstate(invalid="ignore"):  # inf − inf at an exact index: take the value itself
        out = np.where(frac == 0, v[lo], v[lo] + frac * (v[hi] - v[lo]))
    return np.where(np.isinf(v[hi]) & (frac > 0), np.inf, out)


def summarize(
    df: pd.DataFrame, x: str, y: str, by: str | None = None, q: Sequence[float] = (1 / 16, 15 / 16)
) -> pd.DataFrame:
    """Median and quantile band of `y` per (`by`, `x`): columns [by], x, median, lo, hi, n.

    `n` counts the non-NaN values (e.g. seeds that did not diverge)."""
    _need(df, [c for c in (x, y, by) if c is not None])
    if len(q) != 2 or not 0 <= q[0] <= q[1] <= 1:
        raise ValueError(f"argument q must be two quantiles 0 ≤ q0 ≤ q1 ≤ 1, got {q!r}")
    keys = [by, x] if by is not None else [x]
    rows = []
    for key, g in df.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        med, lo, hi = quantiles(g[y].astype(float), (0.5, *q))
        n = int(g[y].astype(float).notna().sum())
        rows.append(
            {**dict(zip(keys, key, strict=True)), "median": med, "lo": lo, "hi": hi, "n": n}
        )
    return pd.DataFrame.from_records(rows, columns=[*keys, "median", "lo", "hi", "n"])


def _label(fmt: LabelFmt, by: str, v: Any) -> str:
    return fmt(by, v) if callable(fmt) else fmt.format(by=by.rsplit(".", 1)[-1], value=v)


def band_plot(
    ax,
    df: pd.DataFrame,
    x: str,
    y: str,
    by: str | None = None,
    q: Sequence[float] = (1 / 16, 15 / 16),
    label_fmt: LabelFmt = "{by} = {value}",
    logy: bool = False,
    *,
    logx: bool = False,
    label: str | None = None,
    **line_kw,
) -> pd.DataFrame:
    """Median of `y` over the rows sharing (`by`, `x`) (the seeds), with a shaded band between
    the quantiles `q`; one line per value of `by`. Returns `summarize(df, x, y, by, q)`.

    label_fmt: "{by}"/"{value}" template (by is the last segment of the column name, so
    "task.H" shows as "H") or a function (by, value) -> str. `label` names the single line
    when `by` is None. NaN rows are dropped; infinite medians are drawn as ▲ at the top of the
    axes, bands reaching ∞ are shaded up to the top. Extra keywords go to `ax.plot`."""
    s = summarize(df, x, y, by, q)
    if by is not None and isinstance(df[by].dtype, pd.CategoricalDtype):
        # keep the categorical's own order (e.g. sweep points by value, `_group_labels`)
        s[by] = pd.Categorical(s[by], categories=df[by].cat.categories, ordered=True)
    if logy:
        ax.set_yscale("log")
    if logx:
        ax.set_xscale("log")
    groups = [(None, s)] if by is None else list(s.groupby(by, sort=True, observed=True))
    inf_top: list[tuple[Any, pd.DataFrame, str]] = []  # bands to extend once the limits are known
    any_inf = False
    for v, g in groups:
        g = g.sort_values(x)
        name = label if by is None else _label(label_fmt, by, v)
        xs = g[x].to_numpy(float)
        med, lo, hi = (g[c].to_numpy(float) for c in ("median", "lo", "hi"))
        ok = np.isfinite(med) & (med > 0 if logy else True)
        ys = np.where(ok, med, np.nan)
        (line,) = ax.plot(np.where(ok, xs, np.nan), ys, label=name, **line_kw)
        color = line.get_color()
        band = np.isfinite(lo) & ~np.isnan(hi) & (lo > 0 if logy else True)
        finite_hi = np.isfinite(hi)
        ax.fill_between(xs, lo, hi, where=band & finite_hi, color=color, alpha=0.2, lw=0)
        if np.any(band & ~finite_hi):
            inf_top.append((color, g.assign(_band=band & ~finite_hi), x))
        inf = np.isposinf(med)
        if inf.any():
            any_inf = True
            ax.plot(
                xs[inf],
                np.ones(inf.sum()),
                INF_MARKER,
                color=color,
                ms=7,
                clip_on=False,
                transform=ax.get_xaxis_transform(),  # x in data, y in axes units: the top edge
            )
    if inf_top:
        bottom, top = ax.get_ylim()
        for color, g, xc in inf_top:
            ax.fill_between(
                g[xc].to_numpy(float),
                g["lo"].to_numpy(float),
                top,
                where=g["_band"].to_numpy(),
                color=color,
                alpha=0.12,
                lw=0,
            )
        ax.set_ylim(bottom, top)
    if any_inf:
        ax.plot([], [], INF_MARKER, color="0.3", label="median = ∞ (at the top)")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return s


# ---------------------------------------------------------------------------------------------
# Fits and overlays


def theory_line(ax, x, y, label: str, **kw):
    """A theory curve: dashed, dark grey unless `color` is given. Returns the Line2D."""
    kw = {"color": "0.25", "lw": 1.5, "ls": "--", **kw}
    (line,) = ax.plot(np.asarray(x, float), np.asarray(y, float), label=label, **kw)
    return line


def grid_ticks(ax, xs, fmt: str = "g") -> None:
    """Major x ticks at the grid's own values, labelled as plain numbers (format spec `fmt`),
    and no minor labels: a log axis over a few grid points reads as the grid."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(xs, [format(x, fmt) for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def loglog(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    """Both axes logarithmic, with their labels (and a title)."""
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    if title is not None:
        ax.set_title(title)


def panels(n: int, per_row: int = 2, row_height: float = 2.9):
    """(fig, axes) for a figure of `n` panels at the double-column width, at most `per_row`
    a row (two 3.3-in columns by default, the widths a paper sets them at), `row_height`
    inches a row; `axes` is a flat array of the n axes (unused grid cells removed)."""
    ncol = min(n, per_row)
    nrow = math.ceil(n / ncol)
    fig, grid = plt.subplots(nrow, ncol, figsize=(style.WIDTHS["double"], row_height * nrow),
                             squeeze=False)
    flat = list(grid.flat)
    for ax in flat[n:]:
        ax.remove()
    fig.legends_below = True  # `save` moves its long legends under their panels
    return fig, np.array(flat[:n], dtype=object)


#: a legend of more entries than this is moved below its axes by `save`
MAX_LEGEND_INSIDE = 4


def legends_below(fig, max_inside: int = MAX_LEGEND_INSIDE) -> None:
    """Move each legend of more than `max_inside` entries below its axes (at a paper's widths a
    long legend inside a panel covers its data): in two columns when they fit the panel's
    width, else one; a fixed 0.45 in under the axes' bottom edge (below the tick labels and
    x label). The figure grows by the tallest such legend of each row of panels, so the
    panels keep their size instead of being squeezed."""
    from matplotlib.transforms import offset_copy

    grow: dict[float, float] = {}  # row (its axes' bottom, rounded) -> inches added
    size = plt.rcParams["legend.fontsize"]
    size = size if isinstance(size, int | float) else 7.0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None or len(leg.get_texts()) <= max_inside:
            continue
        labels = [t.get_text() for t in leg.get_texts()]
        mine = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
        handles = [mine.get(lab, h) for lab, h in zip(labels, leg.legend_handles, strict=True)]
        title = leg.get_title().get_text() or None
        leg.remove()
        col_pt = 0.55 * size * max(len(lab) for lab in labels) + 3 * size  # text and handle
        width_pt = ax.get_position().width * fig.get_figwidth() * 72
        ncol = 2 if 2 * col_pt <= 1.1 * width_pt else 1
        under = offset_copy(ax.transAxes, fig=fig, y=-0.45, units="inches")
        ax.legend(handles, labels, title=title, loc="upper center", ncol=ncol,
                  bbox_to_anchor=(0.5, 0.0), bbox_transform=under)
        rows = -(-len(labels) // ncol) + (title is not None)
        row = round(ax.get_position().y0, 2)
        grow[row] = max(grow.get(row, 0.0), 0.1 + rows * 1.45 * size / 72)
    if grow:
        fig.set_figheight(fig.get_figheight() + sum(grow.values()))


def shared_legend_below(fig) -> float:
    """One legend under the whole figure, of every labelled line of its axes (each label
    once), in place of the axes' own; returns the fraction of the figure's height it takes
    (what the layout must leave free)."""
    handles, labels = [], []
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not labels:
        return 0.0
    # as many columns (≤ 3) as the longest label allows across the figure's width
    size = plt.rcParams["legend.fontsize"]
    size = size if isinstance(size, int | float) else 7.0
    col_pt = 0.55 * size * max(len(lab) for lab in labels) + 3 * size  # text and handle
    ncol = int(max(1, min(3, len(labels), fig.get_figwidth() * 72 // col_pt)))
    leg = fig.legend(handles, labels, loc="lower center", ncol=ncol, bbox_to_anchor=(0.5, 0.0))
    fig.canvas.draw()
    return leg.get_window_extent().height / fig.bbox.height


def fit_titles(fig) -> None:
    """Break each axes title, y label and the figure title into lines that fit their length
    (at about half an em per character), so long titles stay readable at a paper's column
    widths instead of running off the figure; text with mathtext ($...$) is left alone.
    On log axes with chosen (fixed) ticks, the minor tick labels are turned off."""
    em = 0.5  # average character width, in units of the font size
    texts = [(ax.title, ax.get_position().width * fig.get_figwidth()) for ax in fig.axes
             if ax.get_visible()]
    if getattr(fig, "_suptitle", None) is not None:
        texts.append((fig._suptitle, fig.get_figwidth()))
    # y labels run along the axes' height
    texts += [(ax.yaxis.label, ax.get_position().height * fig.get_figheight())
              for ax in fig.axes if ax.get_visible()]
    for t, width_in in texts:
        text = t.get_text()
        if not text or "$" in text:
            continue
        chars = max(20, int(width_in * 72 / (em * t.get_fontsize())))
        t.set_text("\n".join(textwrap.fill(line, chars) for line in text.split("\n")))
    for ax in fig.axes:  # log axes with chosen ticks: minor labels would print over them
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log" and isinstance(axis.get_major_locator(), FixedLocator):
                axis.set_minor_formatter(NullFormatter())


def save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Fit the titles (`fit_titles`), move long legends below their axes in a `panels`
    figure (`legends_below`) or gather them in one under a `shared_legend` figure
    (`shared_legend_below`), tight layout, write `path` atomically (temp file in the
    same folder, then rename), close the figure. The format comes from the suffix (.png,
    .pdf, .svg)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"argument path needs a suffix naming the format (.png), got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fit_titles(fig)
        if getattr(fig, "legends_below", False):
            legends_below(fig)
        bottom = shared_legend_below(fig) if getattr(fig, "shared_legend", False) else 0.0
        fig.tight_layout(rect=(0, bottom, 1, 1))
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format=fmt)
        atomic_write_text(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The coverage profile N ↦ Cov_N


def profile_plot(ax, N, cov, lo=None, hi=None, label: str | None = None, **line_kw):
    """The coverage profile N ↦ Cov_N on a log-x axis, (k,) arrays, with its interval [lo, hi]
    shaded when given. Cov_N = 0 cannot sit on a log-y axis, so y stays linear on [0, 1].
    Returns the Line2D."""
    N = np.asarray(N, float)
    (line,) = ax.plot(N, np.asarray(cov, float), marker=".", label=label, **line_kw)
    if lo is not None and hi is not None:
        ax.fill_between(N, np.asarray(lo, float), np.asarray(hi, float),
                        color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N")
    ax.set_ylabel("Cov_N = P_π_D[π_D/π̂ ≥ N]")
    return line


def coverage_pair_figure(report, title: str):
    """`covsim coverage`'s figure of a `logprob_files.CoverageReport`: the profile with its
    Wilson band and Prop. 3.1's bound KL/(log N − 1 + 1/N) (capped at 1, N > 1) dashed."""
    fig, ax = plt.subplots(figsize=style.size("single"))
    level = round(100 * (1 - report.alpha))
    profile_plot(ax, report.N, report.cov, report.lo, report.hi,
                 label=f"Cov_N ({level}% Wilson, n={report.n})")
    ok = report.N > 1
    theory_line(ax, report.N[ok], np.minimum(report.bound[ok], 1.0),
                f"Prop. 3.1 bound, KL = {report.kl:.3g} ± {report.kl_se:.2g}", lw=1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return fig


# ---------------------------------------------------------------------------------------------
# A length sweep (Fig. 2's layout)


def length_figure(d: Path, by: str, N: int, label_fmt: str, xlabel: str, title: str,
                  fit_label: str = "final KL", q: Sequence[float] = (1 / 16, 15 / 16)):
    """Fig. 2's three panels from sweep directory d: KL, Cov_N and KL/Cov_N against training
    step, one line per value of the length axis `by` (median over seeds, band = 1/16–15/16
    quantiles), with the linear fit of the final KL; returns the matplotlib figure."""
    df = read_metrics(d)
    col = f"cov@{N}"
    df = df.assign(ratio=df["kl"] / df[col].where(df[col] > 0))
    fin = finals(df, by)
    Hs = sorted(int(h) for h in fin[by].unique())
    kl_med = [float(np.nanmedian(fin.loc[fin[by] == h, "kl"])) for h in Hs]
    slope, icpt, r2 = linear_fit(Hs, kl_med)
    seeds = int(fin.groupby(by)["seed"].nunique().min())
    q, caption = (q, "band = 1/16–15/16 quantiles") if seeds >= style.MIN_SEEDS_FOR_QUANTILES \
        else style.band(seeds)

    fig, axs = plt.subplots(1, 3, figsize=style.size("double", 0.42))
    fig.shared_legend = True  # the panels share their lines: one legend under the figure
    panels = [
        ("kl", "sequence KL(π_D ‖ π̂) [nats]", True),
        (col, f"Cov_{N} (π_D mass with π_D/π̂ ≥ {N})", False),
        ("ratio", f"KL / Cov_{N} [nats]", True),
    ]
    for ax, (y, label, logy) in zip(axs, panels, strict=True):
        band_plot(ax, df, "step", y, by=by, q=q, label_fmt=label_fmt,
                        logy=logy, marker=".", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axs[1].set_ylim(0, 1)
    # the final plateau of Cov_N is what the claim is about: a zoomed inset
    ins = axs[1].inset_axes([0.38, 0.35, 0.58, 0.55])
    band_plot(ins, df[df["step"] > 0], "step", col, by=by, q=q, marker=".", ms=2)
    ins.set_xlabel("")
    ins.set_ylabel("")
    ins.tick_params(labelsize=7)
    lo = float(np.nanquantile(fin[col], 0.0))
    hi = float(np.nanquantile(fin[col], 1.0))
    pad = max(0.01, hi - lo)
    ins.set_ylim(max(0.0, lo - pad), hi + pad)
    ins.set_title("zoom: steps > 0", fontsize=7)
    ins.grid(alpha=0.3)
    fit = f"{fit_label} ≈ {slope:.3f}·H {icpt:+.2f} (R² {r2:.3f})"
    axs[0].plot([], [], " ", label=fit)
    fig.suptitle(f"{title}; median over {seeds} seeds, {caption.split(', ')[-1]}")
    return fig


# ---------------------------------------------------------------------------------------------
# The generic figure of a run or sweep directory


def sweep_axes(directory: str | Path) -> list[str]:
    """The coordinates that vary across the runs of `directory` (not "seed"), in grid order."""
    s = read_summaries(directory)
    fixed = {"run", "status", "error", "diverged", "diverged_step", "seed"}
    axes = []
    for c in s.columns:
        if c in fixed or "." not in c or c.startswith(("final.", "summary.")):
            continue
        if s[c].astype(str).nunique() > 1:
            axes.append(c)
    return axes


def plot_run(directory: str | Path, out_folder: str | Path, name: str | None = None,
             fmt: str = "png") -> list[Path]:
    """Two figures of a run or sweep directory, median over seeds with a band (min–max below
    16 seeds, `style.band`), one line per point of the sweep axes in numeric order:
    out_folder/<name>.<fmt>, KL, CE and Cov_N (each N of the grid) against step; and
    out_folder/<name>_profile.<fmt>, the coverage profile N ↦ Cov_N at the last step.
    Runs not finished (still running, or killed) are drawn from the records they have
    streamed so far (`read_metrics(..., partial=True)`), their groups marked "(running)"."""
    if fmt not in style.FORMATS:
        raise ValueError(f"argument fmt must be one of {style.FORMATS}, got {fmt!r}")
    directory = Path(directory)
    name = name or directory.name
    df = read_metrics(directory, partial=True)
    if df.empty or "step" not in df.columns:
        raise ValueError(f"{directory}: no evaluation records to plot (no finished runs)")
    running = sorted(df.loc[df["partial"].astype(bool), "run"].unique())
    is_sweep = (directory / "manifest.json").is_file()  # a run directory has no axes
    axes = [a for a in sweep_axes(directory) if a in df.columns] if is_sweep else []
    by = None
    if axes:
        df = df.assign(_group=_group_labels(df, axes, marked=running))
        by = "_group"
    cov_cols = sorted((c for c in df.columns if c.startswith("cov@")), key=lambda c: float(c[4:]))
    panels = [c for c in ("kl", "ce") if c in df.columns] + cov_cols
    seeds = int(df.groupby(by)["seed"].nunique().min()) if by and "seed" in df.columns else (
        df["seed"].nunique() if "seed" in df.columns else 1)
    q, caption = style.band(seeds)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    width = style.WIDTHS["double" if ncol > 1 else "single"]
    fig, axs = plt.subplots(nrow, ncol, figsize=(width, 2.2 * nrow), squeeze=False)
    ylabels = {"kl": "sequence KL(π_D‖π̂) [nats]", "ce": "sequence CE [nats]"}
    for ax, col in zip(axs.flat, panels, strict=False):
        band_plot(ax, df, "step", col, by=by, q=q, label_fmt="{value}", marker=".")
        _auto_yscale(ax, df[col])
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabels.get(col, f"Cov_{col[4:]}"))
        ax.grid(alpha=0.3)
    for ax in list(axs.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axs.flat[0].get_legend_handles_labels()
    if handles:
        axs.flat[0].legend()
    if running:  # a sweep (or run) still running, or killed: say which curves are partial
        caption += (f"; {len(running)} run(s) not finished: partial results"
                     + (", marked (running)" if by else ""))
    fig.suptitle(f"{name}: {caption}")
    files = [save(fig, Path(out_folder) / f"{name}.{fmt}")]
    if len(cov_cols) >= 2:
        files.append(save(profile_figure(df, cov_cols, by, q, f"{name}\n{caption}"),
                          Path(out_folder) / f"{name}_profile.{fmt}"))
    return files


def _group_labels(df: pd.DataFrame, axes: Sequence[str], marked: Sequence[str] = ()
                  ) -> pd.Categorical:
    """"H=8, n_train=500" per row, as a categorical ordered by the axis values themselves (so
    H=8 comes before H=16, which text order would put after it); a group holding one of the
    `marked` runs (not finished) gets " (running)"."""
    keys = list(df[axes].itertuples(index=False, name=None))
    text = [", ".join(f"{a.rsplit('.', 1)[-1]}={v}" for a, v in zip(axes, k, strict=True))
            for k in keys]
    if len(marked):
        hot = {t for t, r in zip(text, df["run"], strict=True) if r in set(marked)}
        text = [t + " (running)" if t in hot else t for t in text]
    order = sorted(dict(zip(text, keys, strict=True)).items(), key=lambda kv: _sort_key(kv[1]))
    return pd.Categorical(text, categories=[t for t, _ in order], ordered=True)


def _sort_key(values: tuple) -> tuple:
    return tuple((0, float(v), "") if isinstance(v, int | float) and not isinstance(v, bool)
                 else (1, 0.0, str(v)) for v in values)


def profile_figure(df: pd.DataFrame, cov_cols: Sequence[str], by: str | None,
                   q: Sequence[float], title: str):
    """Cov_N against N (log x) at the last step, median over seeds with a band per group,
    with the Prop. 3.1 bound of the median final KL dashed in the same colour."""
    last = df[df["step"] == df["step"].max()]
    Ns = np.array([float(c[4:]) for c in cov_cols])
    fig, ax = plt.subplots(figsize=style.size("single"))
    groups = [(None, last)] if by is None else [(k, g) for k, g in
                                               last.groupby(by, sort=True, observed=True)]
    for key, g in groups:
        vals = np.array([quantiles(g[c].astype(float), (0.5, *q)) for c in cov_cols])  # (k, 3)
        line = profile_plot(ax, Ns, vals[:, 0], vals[:, 1], vals[:, 2],
                            label=None if key is None else str(key))
        if "kl" in g.columns:
            kl = float(np.nanmedian(g["kl"].astype(float)))
            ok = Ns > 1
            ax.plot(Ns[ok], np.minimum(1.0, kl / (np.log(Ns[ok]) - 1 + 1 / Ns[ok])), ls="--",
                    lw=0.8, color=line.get_color())
    ax.plot([], [], ls="--", lw=0.8, color="0.3", label="Prop. 3.1 bound at the median KL")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title}, at step {int(last['step'].max())}")
    return fig


def _auto_yscale(ax, values: pd.Series) -> None:
    """Log y when the finite values span more than a factor 20; symlog (linear below the
    smallest positive value) when there are also zeros, so that Cov_N = 0 stays visible."""
    v = values.astype(float).to_numpy()
    v = v[np.isfinite(v)]
    pos = v[v > 0]
    if pos.size == 0 or pos.max() / pos.min() <= 20:
        return
    if np.any(v <= 0):
        ax.set_yscale("symlog", linthresh=float(pos.min()), linscale=0.5)
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale("log")


def _need(df: pd.DataFrame, cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"argument df has no column(s) {missing}; it has {list(df.columns)[:20]}")
