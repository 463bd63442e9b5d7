"""One user's VED tree beside beam search's at equal forwards: the paper's Figure 1, measured.

Beam search of width W is VED's stage 1 with w = W and no further budget, so both trees come
from the same kernel: expanded prefixes (one forward each) as circles, the free candidate
leaves they score as dots; colour = V for expanded nodes and Q for leaves; the target's path
in red; the returned candidates outlined. Depth runs left to right, prefixes top to bottom in
code order.

  python benchmarks/ved_tree.py --workdir=W --user=N --out=F.png
last stdout line: JSON with both trees' forwards, leaves, hits and the target's depth reached.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from absl import app, flags
import jax
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

import trained_run  # pylint: disable=g-import-not-at-top
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.rl import settings as settings_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory the CLI trained.')
_USER = flags.DEFINE_integer('user', 0, 'Row of the split to draw.')
_SPLIT = flags.DEFINE_string('split', 'valid', 'Split the user comes from.')
_MULTIPLIER = flags.DEFINE_float('m', 2.0, 'VED budget multiplier (beam gets equal live forwards).')
_OUT = flags.DEFINE_string('out', 'ved_tree.png', 'PNG path.')
_HEAD_STEPS = flags.DEFINE_integer('value_steps', 100, 'Value-head fitting steps without an RL '
                                   'checkpoint.')


def tree_parts(out: ved_lib.VedOutput, user: int) -> dict:
  """Expanded nodes and scored leaves of one user's tree, as prefixes with their values."""
  tree = jax.tree.map(lambda x: np.asarray(x)[user], out.tree)
  nodes = [(tuple(int(c) for c in tree.prefix[i][:tree.depth[i]]), float(tree.value[i]))
           for i in range(int(tree.num_forwards))]
  last = tree.prefix.shape[-1] - 1
  leaves = [(tuple(int(c) for c in tree.prefix[i][:last]) + (code,), float(tree.child_value[i, code]))
            for i in range(int(tree.num_forwards)) if tree.depth[i] == last
            for code in np.flatnonzero(tree.child_log_prob[i] > -np.inf).tolist()]
  returned = {tuple(int(c) for c in row) for row, ok in zip(out.candidates[user], out.valid[user])
              if ok}
  return {'nodes': nodes, 'leaves': leaves, 'returned': returned}


def draw(ax, parts: dict, target: tuple, title: str, norm) -> None:
  """Layered drawing: x = depth, y = rank of the prefix in code order at its depth."""
  everything = [p for p, _ in parts['nodes']] + [p for p, _ in parts['leaves']]
  rows = {d: sorted({p for p in everything if len(p) == d}) for d in range(len(target) + 1)}
  y = {p: (i + 0.5) / len(rows[len(p)]) for d in rows for i, p in enumerate(rows[d])}
  for p in everything:
    if p:
      on_path = target[:len(p)] == p
      ax.plot([len(p) - 1, len(p)], [y[p[:-1]], y[p]], color='red' if on_path else '0.8',
              lw=1.6 if on_path else 0.4, zorder=1)
  cmap = plt.get_cmap('viridis')
  for p, v in parts['nodes']:
    ax.scatter(len(p), y[p], s=36, color=cmap(norm(v)), edgecolors='k', linewidths=0.4, zorder=3)
  for p, v in parts['leaves']:
    ax.scatter(len(p), y[p], s=12 if p in parts['returned'] else 5, color=cmap(norm(v)),
               edgecolors='k' if p in parts['returned'] else 'none', linewidths=0.5, zorder=2)
  ax.set_title(title, fontsize=9)
  ax.set_xticks(range(len(target) + 1))
  ax.set_xlabel('depth')
  ax.set_yticks([])


def main(argv):
  del argv
  run = trained_run.load(pathlib.Path(_WORKDIR.value), head_steps=_HEAD_STEPS.value)
  dataset = run.dataset
  history = dataset.history_codes(_SPLIT.value)[_USER.value:_USER.value + 1]
  target = tuple(int(c) for c in dataset.target_codes(_SPLIT.value)[_USER.value])
  prefixes = [len({tuple(c[:d]) for c in dataset.item_codes.tolist()}) for d in range(3)]
  vcfg = settings_lib.ved_config(run.config)
  budget = int(_MULTIPLIER.value * ved_lib.base_budget(dataset.num_levels, vcfg.width))
  width = trained_run.beam_width_for(budget, prefixes)
  keys = jax.random.split(jax.random.key(0), 1)
  ved_cfg = dataclasses.replace(vcfg, multiplier=_MULTIPLIER.value, group_size=width)
  beam_cfg = dataclasses.replace(vcfg, width=width, multiplier=1.0, group_size=width,
                                 leaf_ranking='logprob')
  trees = {name: tree_parts(jax.device_get(search.ved_search(run.params, run.cfg, run.trie, history,
                                                             keys, c, keep_tree=True)), 0)
           for name, c in (('beam', beam_cfg), ('ved', ved_cfg))}
  values = [v for t in trees.values() for part in ('nodes', 'leaves') for _, v in t[part]]
  norm = matplotlib.colors.Normalize(min(values), max(values))
  fig, axes = plt.subplots(1, 2, figsize=(12, 6), sharey=True)
  summary = {'user': _USER.value, 'split': _SPLIT.value, 'target': list(target), 'budget': budget,
             'beam_width': width}
  for ax, (name, parts) in zip(axes, trees.items()):
    reached = max((len(p) for p, _ in parts['nodes'] + parts['leaves'] if target[:len(p)] == p),
                  default=0)
    hit = target in parts['returned']
    summary[name] = {'forwards': len(parts['nodes']), 'leaves': len(parts['leaves']),
                     'target_depth_reached': reached, 'hit': hit}
    label = 'beam search' if name == 'beam' else f'VED ({vcfg.selection}, {vcfg.leaf_ranking})'
    draw(ax, parts, target, f'{label}: {len(parts["nodes"])} forwards, {len(parts["leaves"])} '
         f'leaves, target {"found" if hit else f"reached depth {reached}"}', norm)
  fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap='viridis'), ax=axes, label='V (nodes), Q (leaves)')
  fig.suptitle(f'{dataset.name} {_SPLIT.value} user {_USER.value}: equal live forwards (budget '
               f'{budget}); red: the target path; outlined: returned candidates', fontsize=10)
  pathlib.Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(_OUT.value, dpi=110)
  print(json.dumps(summary))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
