r"""Rebuilds README.md's headline table from the metrics.json files of the runs behind it.

  python docs/headline.py            # rewrite the block between the headline markers
  python docs/headline.py --check    # exit 1 if README.md differs from what the files give
  python docs/headline.py --collect industrial/transition=W/eval/transition_test/metrics.json

Each row reads <root>/<dataset>/<row>/metrics.json (default root docs/results/headline/, committed),
the file `python -m vstar_jax.main` wrote for that row (ROWS below names the command and the
eval folder); --collect copies such a file into place. A missing file is shown as being
re-measured, never guessed. The published references are constants (design README §4).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
DEFAULT_ROOT = ROOT / 'docs' / 'results' / 'headline'
START, END = '<!-- headline:start -->', '<!-- headline:end -->'
DATASETS = {'industrial': 'Industrial', 'office': 'Office'}  # Industrial_and_Scientific, Office_Products
# (folder, label, workdir, eval folder the metrics.json comes from).
ROWS = (
    ('transition', 'transition baseline', 'W', 'eval/transition_test'),
    ('sft_all', 'SFT on all train rows', 'W_ALL', 'eval/sft_test'),
    ('sft_holdout', 'default pipeline: SFT (the RL start)', 'W', 'eval/sft_test'),
    ('vstar', 'default pipeline: SFT → V-STAR + anchor (kept by valid)', 'W', 'eval/rl_test'),
)
COMMANDS = {  # workdir -> the command that writes its rows
    'W': 'python -m vstar_jax.main --config=configs/amazon.py:{d} --workdir=W --config.mode=all',
    'W_ALL': ('python -m vstar_jax.main --config=configs/amazon.py:{d} --workdir=W_ALL '
              '--config.mode=sft --config.data.holdout=0'),
}
NOTE_MARKS = '²³⁴⁵⁶⁷⁸⁹'
FULL_SPLIT = 'the full original train split (~3.4× our rows)'
PUBLISHED = {  # (model, HR@10, NDCG@10); design README §4 unless noted
    'industrial': (('TIGER', 0.1321, 0.0908), ('MiniOneRec, Qwen2.5 backbone', 0.1586, 0.1167)),
    'office': (('TIGER¹', 0.1408, 0.1002), ('MiniOneRec, Qwen2.5 backbone', 0.1634, 0.1242)),
}


def trained_on(m: dict) -> str:
  """The rows a metrics.json says its model (or baseline) was fit on."""
  def rows(splits, count):
    named = '+'.join(splits) if splits else '?'
    return f'{named} ({count} rows)' if count is not None else named
  if 'rl_train_splits' in m:
    return (f'SFT: {rows(m.get("sft_train_splits"), m.get("sft_train_rows"))}; '
            f'RL: {rows(m["rl_train_splits"], m.get("rl_train_rows"))}')
  return rows(m.get('train_splits'), m.get('train_rows'))


def build(root: pathlib.Path = DEFAULT_ROOT) -> str:
  """The headline block (markers included) from the metrics.json files under `root`."""
  out = [START, '<!-- built by `python docs/headline.py` from docs/results/headline/; do not edit -->']
  notes = []
  out += ['', '| dataset | model | trained on | HR@10 | NDCG@10 |', '|---|---|---|---|---|']
  for dataset, name in DATASETS.items():
    for folder, label, _, _ in ROWS:
      path = root / dataset / folder / 'metrics.json'
      if not path.is_file():
        out.append(f'| {name} | {label} | – | (being re-measured) | (being re-measured) |')
        continue
      m = json.loads(path.read_text())
      mark = ''
      if m.get('stub_source'):  # taken from an earlier record until the run is re-taken
        mark = NOTE_MARKS[len(notes)]
        notes.append(f'{mark} {m["stub_source"]}')
      out.append(f'| {name} | {label}{mark} | {trained_on(m)} | {m["HR@10"]:.4f} | '
                 f'{m["NDCG@10"]:.4f} |')
    for model, hr, ndcg in PUBLISHED[dataset]:
      out.append(f'| {name} | {model} (published) | {FULL_SPLIT} | {hr:.4f} | {ndcg:.4f} |')
  out += ['', '`holdout` = each user\'s last train row, which the default pipeline (`data.holdout=1`) '
          'moves out of `train` into RL\'s rollout rows. ¹ As this project has quoted it since its '
          'first SFT table (design README §4 lists TIGER for Industrial only).', *notes]
  out += ['', 'Rows from W: transition, SFT start, V-STAR; from W_ALL: SFT on all train rows:',
          '', '```bash']
  out += [COMMANDS[w].format(d='<industrial|office>') for w in COMMANDS]
  out += ['```', END]
  return '\n'.join(out)


def rewrite(text: str, block: str) -> str:
  """`text` with the block between the markers (inclusive) replaced by `block`."""
  start, end = text.find(START), text.find(END)
  if start < 0 or end < start:
    raise ValueError(f'README.md lacks the {START} ... {END} markers')
  return text[:start] + block + text[end + len(END):]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='fail if README.md is not current')
  parser.add_argument('--root', type=pathlib.Path, default=DEFAULT_ROOT,
                      help='folder of <dataset>/<row>/metrics.json')
  parser.add_argument('--collect', action='append', default=[], metavar='DATASET/ROW=PATH',
                      help='copy a metrics.json into place first (rows: '
                           + ', '.join(r[0] for r in ROWS) + ')')
  args = parser.parse_args(argv)
  for item in args.collect:
    target, _, source = item.partition('=')
    dataset, _, row = target.partition('/')
    if dataset not in DATASETS or row not in [r[0] for r in ROWS] or not pathlib.Path(source).is_file():
      parser.error(f'--collect {item!r}: expected DATASET/ROW=PATH with DATASET in '
                   f'{tuple(DATASETS)}, ROW in {tuple(r[0] for r in ROWS)} and an existing file')
    (args.root / dataset / row).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, args.root / dataset / row / 'metrics.json')
  text = README.read_text()
  new = rewrite(text, build(args.root))
  if args.check:
    if new != text:
      print('README.md headline table is not what docs/headline.py builds: run python docs/headline.py',
            file=sys.stderr)
      return 1
    return 0
  if new != text:
    README.write_text(new)
    print('README.md headline table rewritten')
  return 0


if __name__ == '__main__':
  sys.exit(main())
