r"""Seed x knob sweeps over the vstar_jax CLI: one workdir per run, one summary table per sweep.

Sweeps are flag overrides, never code edits (big_vision style):

  python launch/sweep.py --name=rollout --seeds=0,1,2 \
      --grid='rl.rollout=ved,beam;rl.w_sib=0,1' -- --config.mode=rl   # print the 12 commands
  python launch/sweep.py ... --run          # run them one after another
  python launch/sweep.py ... --summarize    # mean ± std over seeds -> summary.md, summary.json
  python launch/sweep.py ... --summarize --reference=W_SFT/eval/sft_test   # + paired tests

Run k writes to <root>/<name>/seed<k>_<knob=value>_..., and the summary reads each run's
eval/<stage>_test/metrics.json (design §7). With --reference (an eval dir) or --reference_row
(another row of the sweep, 'stage:label'), every row also gets the paired per-user test of its
HR@10 / NDCG@10 against the reference (vstar_jax.eval.significance: each user's metric
averaged over the row's seeds, then a paired bootstrap and a sign test over the same users).
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import math
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Sequence

from absl import app, flags, logging

from vstar_jax.eval import significance

KS = (3, 5, 10)
METRICS = tuple(f'{m}@{k}' for k in KS for m in ('HR', 'NDCG'))
# Summarized too when every run of a row has them (diversity and RL cost, for ablation tables).
OPTIONAL = ('distinct_L1@10', 'coverage@10', 'rl_wall_s', 'valid_NDCG@10_best',
            'valid_NDCG@10_last')
_KNOB = re.compile(r'[A-Za-z_]\w*(\.[A-Za-z_]\w*)*')
_UNSAFE_IN_PATH = re.compile(r'[^\w.=+,-]')
_OPEN, _CLOSE = '([{', ')]}'

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """CLI flags, defined only when run as a script so tests can import the pure functions
  next to modules that define --config themselves (absl rejects duplicate flags)."""
  flags.DEFINE_string('name', None, 'Sweep name: runs go to <root>/<name>/.')
  flags.DEFINE_string('root', 'workdirs', 'Directory holding every sweep.')
  flags.DEFINE_string('config', 'configs/amazon.py:industrial', 'Passed as --config.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds, each passed as --config.seed.')
  flags.DEFINE_string('grid', '', "Knob values to cross, 'a.b=v1,v2;c=w1,w2' (values may hold "
                      'commas inside brackets, e.g. "(\'train\',\'valid\')").')
  flags.DEFINE_string('launcher', f'{shlex.quote(sys.executable)} -m vstar_jax.main',
                      "Command prefix, e.g. 'launch/gpu.sh --gpus=0 --'.")
  flags.DEFINE_bool('run', False, 'Run the commands one after another (default: print them).')
  flags.DEFINE_bool('summarize', False, "Collect the runs' metrics into one table.")
  flags.DEFINE_list('stages', ['sft', 'rl'], 'Stages summarized (eval/<stage>_test/).')
  flags.DEFINE_multi_string('reference', [], 'An eval dir (holding predictions.json) every row '
                            'is tested against, per user (e.g. the SFT start: W_SFT/eval/sft_test). '
                            'Repeat it, or give a glob, to pair against several runs (e.g. another '
                            "sweep's seeds): each user's metric is then averaged over them.")
  flags.DEFINE_string('reference_row', '', "A row of this sweep every row is tested against, "
                      "'stage:label' (e.g. 'rl:rl.rollout=beam rl.w_sib=0').")


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of the sweep: a seed and one value per grid knob."""
  seed: int
  knobs: tuple[tuple[str, str], ...]

  @property
  def name(self) -> str:
    """Workdir name, seed<k>_<knob=value>_..., with path-unsafe characters replaced by '-'."""
    parts = [f'seed{self.seed}'] + [f'{k}={v}' for k, v in self.knobs]
    return _UNSAFE_IN_PATH.sub('-', '_'.join(parts))

  @property
  def label(self) -> str:
    """The knob setting without the seed: the row a run contributes to in the summary."""
    return ' '.join(f'{k}={v}' for k, v in self.knobs) or '(base)'


def _split_top_level(text: str, sep: str) -> list[str]:
  """Splits at `sep` outside brackets, so tuple values like ('a','b') stay whole."""
  pieces, depth, start = [], 0, 0
  for i, char in enumerate(text):
    if char in _OPEN:
      depth += 1
    elif char in _CLOSE:
      depth -= 1
      if depth < 0:
        raise ValueError(f'unbalanced {char!r} in {text!r}')
    elif char == sep and depth == 0:
      pieces.append(text[start:i])
      start = i + 1
  if depth:
    raise ValueError(f'unclosed bracket in {text!r}')
  return pieces + [text[start:]]


def parse_seeds(items: Sequence[str]) -> list[int]:
  """'0,1,2' (as absl's list flag) -> [0, 1, 2]; duplicates or non-integers are errors."""
  seeds = []
  for item in items:
    try:
      seeds.append(int(item))
    except ValueError:
      raise ValueError(f'--seeds: {item!r} is not an integer') from None
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds: need distinct integers, got {list(items)}')
  return seeds


def parse_grid(text: str) -> list[tuple[str, tuple[str, ...]]]:
  """'a.b=v1,v2;c=w' -> [('a.b', ('v1', 'v2')), ('c', ('w',))]; errors name the bad piece."""
  if not text.strip():
    return []
  grid = []
  for i, piece in enumerate(_split_top_level(text, ';')):
    if not piece.strip():
      raise ValueError(f'grid piece {i + 1} of {text!r} is empty')
    knob, eq, values = piece.partition('=')
    knob = knob.strip()
    if not eq:
      raise ValueError(f'grid piece {piece!r}: expected knob=value[,value...]')
    if not _KNOB.fullmatch(knob):
      raise ValueError(f'grid piece {piece!r}: {knob!r} is not a config path like rl.w_sib')
    if knob == 'seed':
      raise ValueError(f'grid piece {piece!r}: sweep seeds with --seeds')
    if knob in dict(grid):
      raise ValueError(f'grid piece {piece!r}: knob {knob!r} appears twice')
    try:
      split = [v.strip() for v in _split_top_level(values, ',')]
    except ValueError as e:
      raise ValueError(f'grid piece {piece!r}: {e}') from None
    if '' in split:
      raise ValueError(f'grid piece {piece!r}: empty value')
    if len(set(split)) != len(split):
      raise ValueError(f'grid piece {piece!r}: repeated value')
    grid.append((knob, tuple(split)))
  return grid


def expand(seeds: Sequence[int], grid: Sequence[tuple[str, Sequence[str]]]) -> list[Run]:
  """The cross product seeds x values of every knob, seed-major; workdir names must be distinct."""
  knobs = [k for k, _ in grid]
  runs = [Run(seed, tuple(zip(knobs, combo)))
          for seed in seeds for combo in itertools.product(*(v for _, v in grid))]
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    clash = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f'grid values collide after making them path-safe: {clash}')
  return runs


def check_extra(extra: Sequence[str], grid: Sequence[tuple[str, Sequence[str]]]) -> None:
  """Rejects pass-through flags that the sweep sets itself (they would silently win)."""
  owned = {'--config', '--workdir', '--config.seed'} | {f'--config.{k}' for k, _ in grid}
  for arg in extra:
    if arg.split('=', 1)[0] in owned:
      raise ValueError(f'{arg!r} is set by the sweep; use --config, --seeds or --grid instead')


def command(launcher: Sequence[str], config: str, workdir: pathlib.Path, run: Run,
            extra: Sequence[str]) -> list[str]:
  """The CLI call for one run: --config first (config_flags needs it before any override)."""
  return [*launcher, f'--config={config}', f'--workdir={workdir}', f'--config.seed={run.seed}',
          *(f'--config.{k}={v}' for k, v in run.knobs), *extra]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0.0 for a single seed)."""
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def valid_curve_stats(workdir: pathlib.Path, stage: str) -> dict:
  """Best and last valid NDCG@10 the run logged while training `stage` (rl_final: rl), from
  metrics.jsonl: what a sweep chooses by, since test is read once per reported run."""
  path, trained = workdir / 'metrics.jsonl', stage.split('_')[0]
  if not path.is_file():
    return {}
  curve = [row['valid_NDCG@10'] for row in map(json.loads, path.read_text().splitlines())
           if row.get('stage') == trained and 'valid_NDCG@10' in row]
  return {'valid_NDCG@10_best': max(curve), 'valid_NDCG@10_last': curve[-1]} if curve else {}


def eval_dir(sweep_dir: pathlib.Path, run: Run, stage: str) -> pathlib.Path:
  """<run>/eval/<stage>_test; for rl_final, rl_test when the run wrote none: the pipeline scores
  the last RL step separately only when it is not the kept one, so then the two are the same."""
  found = sweep_dir / run.name / 'eval' / f'{stage}_test'
  if stage == 'rl_final' and not (found / 'metrics.json').is_file():
    kept = sweep_dir / run.name / 'eval' / 'rl_test'
    if (kept / 'metrics.json').is_file():
      return kept
  return found


def summarize(sweep_dir: pathlib.Path, runs: Sequence[Run], stages: Sequence[str]) -> dict:
  """Mean ± std over seeds of HR@K / NDCG@K per (stage, knob setting); lists missing files."""
  groups = {}
  for run in runs:
    groups.setdefault(run.label, []).append(run)
  rows, missing = [], []
  for stage in stages:
    for label, group in groups.items():
      found = {}
      for run in group:
        path = eval_dir(sweep_dir, run, stage) / 'metrics.json'
        if not path.is_file():
          missing.append(str(path))
          continue
        found[run.seed] = {**json.loads(path.read_text()),
                           **valid_curve_stats(sweep_dir / run.name, stage)}
        absent = [m for m in METRICS if m not in found[run.seed]]
        if absent:
          raise ValueError(f'{path}: no {absent} (design §8 metrics.json contract)')
      if not found:
        continue
      present = [m for m in OPTIONAL if all(m in found[s] for s in found)]
      stats = {m: _mean_std([found[s][m] for s in sorted(found)]) for m in (*METRICS, *present)}
      rows.append({'stage': stage, 'config': label, 'seeds': sorted(found),
                   'mean': {m: mean for m, (mean, _) in stats.items()},
                   'std': {m: std for m, (_, std) in stats.items()}})
  shown = [m for m in OPTIONAL if any(m in row['mean'] for row in rows)]
  return {'metrics': [*METRICS, *shown], 'rows': rows, 'missing': missing}


PAIRED = ('HR@10', 'NDCG@10')


def _row_per_user(sweep_dir: pathlib.Path, row: dict, runs: Sequence[Run]) -> dict:
  """Each user's HR@10 / NDCG@10 averaged over the row's seeds (from their predictions.json)."""
  return _mean_per_user([str(eval_dir(sweep_dir, r, row['stage']))
                         for r in runs if r.label == row['config'] and r.seed in row['seeds']])


def reference_dirs(patterns: str | Sequence[str]) -> list[str]:
  """The eval dirs --reference names: each value a path or a glob (sorted); one must exist."""
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  found = []
  for pattern in patterns:
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches:
      raise FileNotFoundError(f'--reference={pattern!r}: no such eval dir')
    found.extend(matches)
  return found


def _mean_per_user(eval_dirs: Sequence[str]) -> dict:
  """Each user's HR@10 / NDCG@10 averaged over several eval dirs of the same users."""
  loaded = [significance.load_per_user(d) for d in eval_dirs]
  for d, per in zip(eval_dirs[1:], loaded[1:]):
    if len(per['HR@10']) != len(loaded[0]['HR@10']):
      raise ValueError(f'{d}: {len(per["HR@10"])} users, {eval_dirs[0]} has '
                       f'{len(loaded[0]["HR@10"])}: not the same users, no paired test')
  return {m: sum(p[m] for p in loaded) / len(loaded) for m in PAIRED}


def add_paired_tests(summary: dict, sweep_dir: pathlib.Path, runs: Sequence[Run],
                     reference: str | Sequence[str] = (), reference_row: str = '') -> dict:
  """Adds row['paired'][metric] = significance.compare(reference, row) to every summary row."""
  if reference:
    dirs = reference_dirs(reference)
    ref, name = _mean_per_user(dirs), (dirs[0] if len(dirs) == 1 else dirs)
  else:
    stage, _, label = reference_row.partition(':')
    match = [r for r in summary['rows'] if r['stage'] == stage and r['config'] == label]
    if not match:
      raise ValueError(f'--reference_row={reference_row!r}: no such row in '
                       f'{[(r["stage"], r["config"]) for r in summary["rows"]]}')
    ref, name = _row_per_user(sweep_dir, match[0], runs), reference_row
  for row in summary['rows']:
    ours = _row_per_user(sweep_dir, row, runs)
    row['paired'] = {m: significance.compare(ref[m], ours[m]) for m in PAIRED}
  summary['reference'] = name
  return summary


def _cell(row: dict, metric: str) -> str:
  """'mean ± std' (4 decimals for rates, 2 for diversity counts, 1 for seconds), '–' where a row
  lacks it."""
  if metric not in row['mean']:
    return '–'
  digits = 4 if metric in METRICS or metric.startswith('valid_') else (
      1 if metric.endswith('_s') else 2)
  return f"{row['mean'][metric]:.{digits}f} ± {row['std'][metric]:.{digits}f}"


def _paired_cell(row: dict, metric: str) -> str:
  """'+0.0031 (+2.7%, p=0.012)': the row's paired delta against the reference."""
  t = row['paired'][metric]
  return f"{t['delta']:+.4f} ({100 * t['relative']:+.1f}%, p={t['p_bootstrap']:.3g})"


def to_markdown(summary: dict) -> str:
  """One row per (stage, knob setting): mean ± std over the seeds found (and paired deltas)."""
  paired = [f'Δ{m} vs ref (p)' for m in PAIRED] if 'reference' in summary else []
  head = ['stage', 'config', 'seeds', *summary['metrics'], *paired]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for row in summary['rows']:
    cells = [_cell(row, m) for m in summary['metrics']]
    if paired:
      cells += [_paired_cell(row, m) for m in PAIRED]
    lines.append('| ' + ' | '.join([row['stage'], row['config'], str(len(row['seeds'])), *cells])
                 + ' |')
  reference = summary.get('reference', '')
  reference = reference if isinstance(reference, str) else ', '.join(reference)
  note = f"\nPaired tests against: {reference}\n" if paired else ''
  return '\n'.join(lines) + '\n' + note


def _run_all(commands: Sequence[list[str]], names: Sequence[str]) -> list[str]:
  """Runs the commands in order with a progress line; returns the names of the failed runs."""
  failed, start = [], time.monotonic()
  for i, (cmd, name) in enumerate(zip(commands, names)):
    elapsed = time.monotonic() - start
    eta = f', ETA {elapsed / i * (len(commands) - i) / 60:.1f} min' if i else ''
    logging.info('[%d/%d] %s (%.1f min elapsed%s)', i + 1, len(commands), name, elapsed / 60, eta)
    if subprocess.run(cmd, check=False).returncode:
      logging.error('run %s failed', name)
      failed.append(name)
  return failed


def main(argv):
  extra = argv[1:]
  if not FLAGS.name:
    raise app.UsageError('--name is required')
  try:
    seeds, grid = parse_seeds(FLAGS.seeds), parse_grid(FLAGS.grid)
    runs = expand(seeds, grid)
    check_extra(extra, grid)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  sweep_dir = pathlib.Path(FLAGS.root) / FLAGS.name
  launcher = shlex.split(FLAGS.launcher)
  commands = [command(launcher, FLAGS.config, sweep_dir / r.name, r, extra) for r in runs]
  if not FLAGS.run and not FLAGS.summarize:
    print('\n'.join(shlex.join(c) for c in commands))
    return
  if FLAGS.run:
    failed = _run_all(commands, [r.name for r in runs])
    if failed:
      sys.exit(f'{len(failed)} of {len(runs)} runs failed: {failed}')
  if FLAGS.summarize:
    try:
      summary = summarize(sweep_dir, runs, FLAGS.stages)
    except ValueError as e:
      sys.exit(str(e))
    for path in summary['missing']:
      logging.warning('missing %s', path)
    if not summary['rows']:
      sys.exit(f'no metrics.json of stages {FLAGS.stages} under {sweep_dir}')
    if FLAGS.reference or FLAGS.reference_row:
      try:
        summary = add_paired_tests(summary, sweep_dir, runs, FLAGS.reference, FLAGS.reference_row)
      except (ValueError, FileNotFoundError) as e:
        sys.exit(str(e))
    table = to_markdown(summary)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / 'summary.json').write_text(json.dumps(summary, indent=1))
    (sweep_dir / 'summary.md').write_text(table)
    print(table, end='')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
