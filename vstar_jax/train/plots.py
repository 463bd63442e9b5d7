"""Training-curve PNGs from metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_curves(records: list[dict], keys: list[str], path: pathlib.Path, title: str,
                kept_step: int | None = None, references: dict | None = None) -> pathlib.Path | None:
  """One panel per key found in `records` (x = step); returns the PNG path or None if nothing to plot.

  kept_step: the step the stage kept (best by valid), marked on every panel.
  references: {label: {key: value}}, horizontal lines (the baselines) on the panels of those keys.
  """
  keys = [k for k in keys if any(k in r for r in records)]
  if not keys:
    return None
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(r['step'], r[key]) for r in records if key in r]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='.' if len(pts) < 50 else None)
    if kept_step is not None:
      ax.axvline(kept_step, color='k', linestyle='--', linewidth=0.8, label=f'kept (step {kept_step})')
    for (label, values), color in zip((references or {}).items(), ('tab:red', 'tab:green', 'tab:purple')):
      if key in values:
        ax.axhline(values[key], color=color, linestyle=':', label=f'{label} {values[key]:.3f}')
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
    ax.set_xlabel('step')
    ax.set_title(key)
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
