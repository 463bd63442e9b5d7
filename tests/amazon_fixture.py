"""Writes a tiny, valid MiniOneRec-format dataset (as 'industrial') for loader tests."""

import csv
import json
import pathlib

ITEMS = {0: (1, 2, 3), 1: (1, 2, 4), 2: (1, 5, 0), 3: (7, 0, 0), 4: (7, 0, 0)}  # 3 and 4 collide
TITLES = {0: 'Drill, "cordless"', 1: 'Bits', 2: 'Saw', 3: 'Glue', 4: 'Glue XL'}
STEM = 'Industrial_and_Scientific_5_2016-10-2018-11'
HEADER = ['user_id', 'history_item_title', 'item_title', 'history_item_id', 'item_id',
          'history_item_sid', 'item_sid']


def sid(item):
  a, b, c = ITEMS[item]
  return f'<a_{a}><b_{b}><c_{c}>'


def row(user, history, target):
  return [user, repr([TITLES[i] for i in history]), TITLES[target], repr(history), str(target),
          repr([sid(i) for i in history]), sid(target)]


ROWS = {
    'train': [row('U1', [0], 1), row('U1', [0, 1], 2), row('U2', [3], 0)],
    'valid': [row('U1', [0, 1, 2], 3), row('U2', [3, 0], 1)],
    'test': [row('U1', [0, 1, 2, 3], 4), row('U2', [3, 0, 1], 2)],
}


def write(root: pathlib.Path, rows=None) -> pathlib.Path:
  rows = rows or ROWS
  for split, split_rows in rows.items():
    (root / split).mkdir(parents=True, exist_ok=True)
    with open(root / split / f'{STEM}.csv', 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(HEADER)
      writer.writerows(split_rows)
  (root / 'info').mkdir(exist_ok=True)
  (root / 'info' / f'{STEM}.txt').write_text(
      ''.join(f'{sid(i)}\t{TITLES[i]}\t{i}\n' for i in ITEMS), encoding='utf-8')
  (root / 'index').mkdir(exist_ok=True)
  index = {str(i): [f'<a_{a}>', f'<b_{b}>', f'<c_{c}>'] for i, (a, b, c) in ITEMS.items()}
  (root / 'index' / 'Industrial_and_Scientific.index.json').write_text(json.dumps(index))
  (root / 'index' / 'Industrial_and_Scientific.item.json').write_text(
      json.dumps({str(i): {'title': TITLES[i], 'description': '', 'brand': '', 'categories': ''}
                  for i in ITEMS}))
  return root
