"""Shared drawing helpers for report figures: gnorm's style, axis labels with units, colours and ticks.

Figures are built as ``matplotlib.figure.Figure`` objects on the non-interactive Agg canvas rather
than through ``pyplot``: nothing here selects a process-wide backend or keeps figures in pyplot's
global registry, so importing this module never changes how a user's own notebook plots. A figure
function decorated with :func:`styled` draws under gnorm's fonts and grid without touching the
global rcParams. matplotlib itself is imported when a figure is drawn, not with this module (the
analyzers import it, and listing them must stay quick).
"""

from __future__ import annotations

from functools import wraps
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RHO = "controller.rho"
LR = "optimizer.lr"
P = "task.p"
#: Axis labels (with units) for the keys the figures put on an axis.
AXIS_LABELS = {
    RHO: r"$\rho$ = held norm / $W_c$ (dimensionless)",
    LR: "learning rate",
    P: "p (modulus)",
    "held_norm": r"held norm $\rho \cdot W_c$ ($\|W\|$, Frobenius)",
}
STEP_LABEL = "optimizer step (log scale)"
NORM_LABEL = r"weight norm $\|W\|$ (Frobenius)"
T_GROK_LABEL = r"$T_\mathrm{grok}$ (steps, log scale)"
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "savefig.dpi": 150}


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on its own Agg canvas (never in pyplot's registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def styled(function: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under gnorm's style (fonts, grid) without touching the global rcParams."""
    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        import matplotlib

        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)
    return wrapper


def axis_label(key: str) -> str:
    """The axis label (with units) of a run key, else the key itself."""
    return AXIS_LABELS.get(key, key)


def palette(count: int, numeric: bool) -> list[Any]:
    """Ordered colours (viridis without its pale end) for a numeric sweep, tab10 for categories."""
    import matplotlib

    if numeric:
        colormap = matplotlib.colormaps["viridis"]
        return [colormap(0.85 * i / max(count - 1, 1)) for i in range(count)]
    colormap = matplotlib.colormaps["tab10"]
    return [colormap(i % 10) for i in range(count)]


def plain_log_ticks(axis: Any) -> None:
    """Log axis ticked at 1, 2, 5 x 10^k and labelled with plain numbers (2,000 rather than 2x10^3)."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())
