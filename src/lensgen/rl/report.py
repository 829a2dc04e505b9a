"""The picture of an RL run: reward per step (raw and smoothed) and held-out ShapesEval where measured."""

from __future__ import annotations

import io


def reward_plot_png(metrics: list[dict]) -> bytes:
    """A PNG of metrics.jsonl's reward_mean per step and its running mean, with eval/overall on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    reward = [m["reward_mean"] for m in metrics]
    window = max(1, len(reward) // 12)
    smooth = [sum(reward[max(0, i - window + 1): i + 1]) / len(reward[max(0, i - window + 1): i + 1])
              for i in range(len(reward))]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    ax.plot(steps, reward, color="#bbb", lw=0.8, label="reward (this step's prompts)")
    ax.plot(steps, smooth, color="#1f77b4", lw=2, label=f"reward, mean of {window} steps")
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


__all__ = ["reward_plot_png"]
