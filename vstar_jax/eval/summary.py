"""The end-of-run summary: HR / NDCG @3/5/10 of the evaluations a run wrote, beside the baselines."""

from __future__ import annotations

import json
import pathlib

from vstar_jax import baselines

KS = (3, 5, 10)


def collect(roots: list[pathlib.Path], split: str, since: float) -> tuple[dict, set]:
  """({name: metrics} of every root's eval/<name>_<split>/, names written at or after `since`).

  A name in a later root replaces the same name in an earlier one (--out over W).
  """
  found, fresh = {}, set()
  for root in roots:
    for path in sorted(pathlib.Path(root).glob(f'eval/*_{split}/metrics.json')):
      name = path.parent.name[:-len(f'_{split}')]
      found[name] = json.loads(path.read_text())
      if path.stat().st_mtime >= since:
        fresh.add(name)
      else:
        fresh.discard(name)
  return found, fresh


def table(roots: list[pathlib.Path], split: str, since: float) -> str:
  """The evaluations written since `since` and the baselines, as a plain-text table ('' if none)."""
  found, fresh = collect(roots, split, since)
  if not fresh:
    return ''
  names = [n for n in baselines.BASELINES if n in found] + sorted(  # sft*, then rl*
      (n for n in fresh if n not in baselines.BASELINES), key=lambda n: (not n.startswith('sft'), n))
  columns = [f'{m}@{k}' for k in KS for m in ('HR', 'NDCG')]
  lines = [f'results on {split} (* = written by this run)',
           f'{"":<18}{"rows":>6}' + ''.join(f'{c:>9}' for c in columns)]
  for name in names:
    m = found[name]
    cells = ''.join(f'{m[c]:>9.4f}' if c in m else f'{"-":>9}' for c in columns)
    lines.append(f'{name + (" *" if name in fresh else ""):<18}{m.get("n", 0):>6}{cells}')
  return '\n'.join(lines + notes(found, fresh))


def notes(found: dict, fresh: set) -> list[str]:
  """Plain words for rows that did not move, so a first result is not misread."""
  out = []
  rl = found.get('rl')
  if 'rl' in fresh and rl is not None and rl.get('best_step') == 0:
    out.append(f'note: rl kept step 0 (the SFT policy): no RL step beat it on valid NDCG@10 '
               f'({rl.get("rl_steps", "?")} steps); rl_final is what RL ended with')
  return out
