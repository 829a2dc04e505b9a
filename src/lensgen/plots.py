"""Small matplotlib figures for run reports (the demo's loss curve, the RL reward curve), as PNG bytes."""

from __future__ import annotations

import io


def new_axes(figsize: tuple[float, float] = (7, 3.6)):
    """A figure and axes on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=100)


def plot_noisy_curve(ax, steps: list[int], values: list[float], label: str, divisions: int) -> None:
    """The raw values in grey and their running mean over len/divisions steps on top."""
    window = max(1, len(values) // divisions)
    smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
              for i in range(len(values))]
    ax.plot(steps, values, color="#bbb", lw=0.8, label=label)
    ax.plot(steps, smooth, color="#1f77b4", lw=2, label=f"{label.split(' (')[0]}, mean of {window} steps")


def figure_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


__all__ = ["figure_png", "new_axes", "plot_noisy_curve"]
