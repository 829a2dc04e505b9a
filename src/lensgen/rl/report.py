"""The picture of an RL run: reward per step (raw and smoothed) and held-out ShapesEval where measured."""

from __future__ import annotations


def reward_plot_png(metrics: list[dict]) -> bytes:
    """A PNG of metrics.jsonl's reward_mean per step and its running mean, with eval/overall on a second axis."""
    from lensgen.plots import figure_png, new_axes, plot_noisy_curve

    fig, ax = new_axes()
    plot_noisy_curve(ax, [m["step"] for m in metrics], [m["reward_mean"] for m in metrics],
                     "reward (this step's prompts)", divisions=12)
    ax.set_xlabel("RL step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    evals = [(m["step"], m["eval/overall"]) for m in metrics if "eval/overall" in m]
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        (line,) = ax2.plot(*zip(*evals, strict=True), "o-", color="#d62728")
        ax2.set_ylabel("held-out ShapesEval (subset)")
        handles.append(line)
        labels.append("held-out ShapesEval, subset")
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    return figure_png(fig)


__all__ = ["reward_plot_png"]
