"""Training-curve PNGs from metrics.jsonl (matplotlib, headless)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def plot_curves(records: list[dict], keys: list[str], path: pathlib.Path, title: str) -> pathlib.Path | None:
  """One panel per key found in `records` (x = step); returns the PNG path or None if nothing to plot."""
  keys = [k for k in keys if any(k in r for r in records)]
  if not keys:
    return None
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
  for ax, key in zip(axes[0], keys):
    pts = [(r['step'], r[key]) for r in records if key in r]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='.' if len(pts) < 50 else None)
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
