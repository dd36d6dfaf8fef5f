"""One figure style: paper column widths, 8 pt text, a colour-blind-safe palette, honest bands.

    fig, ax = plt.subplots(figsize=size("single"))      # 3.3 in wide (one column)
    q, label = band(n_seeds)                             # the band's quantiles and its caption

Widths are those of a two-column paper (single 3.3 in, double 6.9 in); text is 8 pt (7 pt
legends and ticks), so a figure placed at its own width needs no scaling. Colours are the
Okabe-Ito palette (distinguishable under the common colour-vision deficiencies), in the order
matplotlib cycles through them. `use()` sets all of it in matplotlib's rcParams;
`covsim.plots` calls it on import.
"""

from __future__ import annotations

import matplotlib

#: Okabe & Ito (2008): blue, vermilion, bluish green, orange, reddish purple, sky blue,
#: yellow, black
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#E69F00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
WIDTHS = {"single": 3.3, "double": 6.9}  # inches
FORMATS = ("png", "pdf", "svg")
DPI = 300  # PNG resolution at the figure's printed size

RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.titlesize": 8,
    "axes.prop_cycle": matplotlib.cycler(color=list(PALETTE)),
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "legend.frameon": False,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,  # TrueType in PDFs: text stays text, editable and searchable
    "svg.fonttype": "none",
}

#: at least this many seeds before a band shows inner quantiles; below it, min–max
MIN_SEEDS_FOR_QUANTILES = 16


def use() -> None:
    """Apply the style to matplotlib's rcParams."""
    matplotlib.rcParams.update(RC)


def size(width: str = "single", aspect: float = 0.75) -> tuple[float, float]:
    """(width, height) in inches: "single" or "double" column, height = aspect · width."""
    if width not in WIDTHS:
        raise ValueError(f"argument width must be one of {list(WIDTHS)}, got {width!r}")
    return WIDTHS[width], WIDTHS[width] * aspect


def band(n_seeds: int) -> tuple[tuple[float, float], str]:
    """The band's quantiles for `n_seeds` seeds and its caption. The 1/16 and 15/16 quantiles
    are only distinct from the extremes with ≥ 16 seeds; with fewer the band is the min–max
    and says so."""
    if n_seeds >= MIN_SEEDS_FOR_QUANTILES:
        return (1 / 16, 15 / 16), f"median over {n_seeds} seeds, band = 1/16–15/16 quantiles"
    if n_seeds <= 1:
        return (0.0, 1.0), "1 seed (no band)"
    return (0.0, 1.0), f"median over {n_seeds} seeds, band = min–max"
