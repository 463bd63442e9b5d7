"""Readers of raw interaction logs and item metadata: Amazon 2018, Amazon 2023, any CSV.

Each reader returns the same two things, so k-core, windows and splits are one code path:
a `Log` (one row per interaction, in file order) and a `Catalogue` (usable titles and the item
text fields). Every malformed input raises DataError naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import gzip
import json
import os
import pathlib

import numpy as np

from vstar_jax.data.amazon import DataError
from vstar_jax.prepare import progress
from vstar_jax.prepare import titles as titles_lib


@dataclasses.dataclass
class Log:
  """Interactions in file order.

  Attributes:
    user: [R] int32 user code (order of first appearance in the file).
    item: [R] int32 item code (order of first appearance in the file).
    time: [R] float64 seconds since the epoch (UTC).
    user_names: user code -> raw user id.
    item_names: item code -> raw item id.
    path: the file read.
  """
  user: np.ndarray
  item: np.ndarray
  time: np.ndarray
  user_names: list
  item_names: list
  path: str


@dataclasses.dataclass
class Catalogue:
  """Item metadata keyed by raw item id.

  Attributes:
    titles: raw id -> usable title (the item survives the title rules).
    fields: raw id -> item.json fields {description, brand, categories} (no title).
    refused: reason -> number of metadata items whose title was refused.
    num_entries: metadata entries read.
  """
  titles: dict
  fields: dict
  refused: dict
  num_entries: int


class _Codes:
  """Raw string ids -> dense int codes in order of first appearance."""

  def __init__(self):
    self.index: dict[str, int] = {}
    self.names: list[str] = []

  def __call__(self, name: str) -> int:
    code = self.index.get(name)
    if code is None:
      code = self.index[name] = len(self.names)
      self.names.append(name)
    return code


def _lines(path: pathlib.Path, desc: str):
  """Yields (line number, bytes) of a plain or .gz file, with a progress line over its bytes."""
  if not path.is_file():
    raise DataError(f'missing file: {path}')
  raw = open(path, 'rb')
  stream = gzip.GzipFile(fileobj=raw) if path.suffix == '.gz' else raw
  bar = progress.Progress(f'{desc} {path.name}', os.path.getsize(path), 'B')
  try:
    for line_no, line in enumerate(stream, start=1):
      if line_no % 20000 == 0:
        bar.update(raw.tell())
      yield line_no, line
  except (OSError, EOFError) as e:  # a corrupt or truncated .gz
    raise DataError(f'{path}: cannot read ({e})') from None
  finally:
    stream.close()
    raw.close()
  bar.close()


def _json_records(path: pathlib.Path, desc: str):
  """Yields (line number, dict) for each non-blank JSON line."""
  for line_no, line in _lines(path, desc):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except UnicodeDecodeError as e:
      raise DataError(f'{path}: line {line_no}: bytes are not valid UTF-8 ({e.reason})') from None
    except json.JSONDecodeError as e:
      raise DataError(f'{path}: line {line_no}: invalid JSON ({e.msg} at column {e.colno})') from None
    if not isinstance(record, dict):
      raise DataError(f'{path}: line {line_no}: expected a JSON object, got {type(record).__name__}')
    yield line_no, record


def _field(record: dict, key: str, path: pathlib.Path, line_no: int):
  if key not in record:
    raise DataError(f'{path}: line {line_no}: missing key {key!r} (found {sorted(record)[:8]})')
  return record[key]


def _id(record, key, path, line_no) -> str:
  value = _field(record, key, path, line_no)
  if not isinstance(value, (str, int)) or isinstance(value, bool) or value == '':
    raise DataError(f'{path}: line {line_no}: key {key!r} must be a non-empty string id, got {value!r}')
  return str(value)


def _int_time(record, key, path, line_no) -> int:
  value = _field(record, key, path, line_no)
  try:
    if isinstance(value, float) and not value.is_integer():
      raise ValueError
    return int(value)
  except (TypeError, ValueError):
    raise DataError(f'{path}: line {line_no}: key {key!r}: unparseable timestamp {value!r} '
                    '(expected an integer)') from None


def _read_log(path, user_key, item_key, time_key, seconds_per_tick) -> Log:
  users, items = _Codes(), _Codes()
  u, i, t = [], [], []
  for line_no, record in _json_records(path, 'reading'):
    u.append(users(_id(record, user_key, path, line_no)))
    i.append(items(_id(record, item_key, path, line_no)))
    t.append(_int_time(record, time_key, path, line_no))
  if not t:
    raise DataError(f'{path}: no interactions (empty file)')
  return Log(np.asarray(u, np.int32), np.asarray(i, np.int32),
             np.asarray(t, np.float64) * seconds_per_tick, users.names, items.names, str(path))


def _read_catalogue(path, item_key, wanted: set, fields_of) -> Catalogue:
  """Titles and fields of the items in `wanted`; a later entry for the same item wins."""
  titles, fields, refused = {}, {}, {}
  num_entries = 0
  for line_no, record in _json_records(path, 'reading'):
    num_entries += 1
    item = _id(record, item_key, path, line_no)
    if item not in wanted:
      continue
    title, reason = titles_lib.clean_title(record.get('title'))
    if title is None:
      refused[reason] = refused.get(reason, 0) + 1
    else:
      titles[item] = title  # MiniOneRec: the last usable title of an item wins
    fields[item] = fields_of(record)
  return Catalogue(titles, fields, refused, num_entries)


def _fields_2018(record: dict) -> dict:
  categories = record.get('categories', record.get('category'))
  return {'description': titles_lib.clean_text(record.get('description')),
          'brand': titles_lib.clean_brand(record.get('brand', '')),
          'categories': titles_lib.join_categories(categories)}


def _fields_2023(record: dict) -> dict:
  description = record.get('description')
  if isinstance(description, list):
    description = ' '.join(str(d) for d in description)
  return {'description': titles_lib.clean_text(description),
          'brand': titles_lib.clean_text(record.get('store')),
          'categories': titles_lib.join_categories(record.get('categories'))}


def read_amazon2018(reviews: pathlib.Path, meta: pathlib.Path) -> tuple[Log, Catalogue]:
  """Amazon Reviews 2018: `reviewerID`, `asin`, `unixReviewTime` (s); metadata keyed by `asin`."""
  log = _read_log(reviews, 'reviewerID', 'asin', 'unixReviewTime', 1.0)
  return log, _read_catalogue(meta, 'asin', set(log.item_names), _fields_2018)


def read_amazon2023(reviews: pathlib.Path, meta: pathlib.Path) -> tuple[Log, Catalogue]:
  """Amazon Reviews 2023: `user_id`, `parent_asin`, `timestamp` (ms); metadata by `parent_asin`."""
  log = _read_log(reviews, 'user_id', 'parent_asin', 'timestamp', 1e-3)
  return log, _read_catalogue(meta, 'parent_asin', set(log.item_names), _fields_2023)


CSV_COLUMNS = ('user', 'item', 'timestamp')
CSV_OPTIONAL = ('title', 'description')


def parse_time(text: str) -> float:
  """A CSV timestamp -> seconds: unix seconds (fractions allowed) or ISO 8601 (naive = UTC)."""
  text = text.strip()
  try:
    return float(text)
  except ValueError:
    pass
  value = datetime.datetime.fromisoformat(text.replace('Z', '+00:00'))
  if value.tzinfo is None:
    value = value.replace(tzinfo=datetime.timezone.utc)
  return value.timestamp()


def read_csv(path: pathlib.Path) -> tuple[Log, Catalogue]:
  """Columns `user,item,timestamp` (+ optional `title,description`); any delimiter csv sniffs.

  An item's title and description are those of its first row where they are non-empty. Without a
  title column every item is kept and titled by its id; with one, the title rules apply.
  """
  lines = _lines(path, 'reading')
  text_lines = (line.decode('utf-8-sig' if n == 1 else 'utf-8') for n, line in lines)
  try:
    first = next(text_lines, '')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: line 1: bytes are not valid UTF-8 ({e.reason})') from None
  try:
    dialect = csv.Sniffer().sniff(first, delimiters=',\t;|')
  except csv.Error:
    raise DataError(f'{path}: line 1: cannot tell the delimiter of the header {first.strip()[:80]!r} '
                    '(expected columns user, item, timestamp separated by , tab ; or |)') from None
  header = next(csv.reader([first], dialect))
  header = [h.strip() for h in header]
  missing = [c for c in CSV_COLUMNS if c not in header]
  if missing:
    raise DataError(f'{path}: line 1: missing column(s) {missing}; found {header}')
  col = {c: header.index(c) for c in CSV_COLUMNS + CSV_OPTIONAL if c in header}
  users, items = _Codes(), _Codes()
  u, i, t = [], [], []
  first_text: dict[str, dict] = {}
  line_no = 1

  def numbered():
    nonlocal line_no
    while True:
      try:
        line = next(text_lines)
      except StopIteration:
        return
      except UnicodeDecodeError as e:
        raise DataError(f'{path}: line {line_no + 1}: bytes are not valid UTF-8 ({e.reason})') from None
      line_no += 1
      yield line

  for row in csv.reader(numbered(), dialect):
    if not any(field.strip() for field in row):
      continue
    if len(row) != len(header):
      raise DataError(f'{path}: line {line_no}: {len(row)} fields, header has {len(header)}')
    user, item = row[col['user']].strip(), row[col['item']].strip()
    for name, value in (('user', user), ('item', item)):
      if not value:
        raise DataError(f'{path}: line {line_no}: field {name} is empty')
    try:
      seconds = parse_time(row[col['timestamp']])
    except ValueError:
      raise DataError(f'{path}: line {line_no}: field timestamp: unparseable timestamp '
                      f'{row[col["timestamp"]]!r} (expected unix seconds or ISO 8601)') from None
    u.append(users(user))
    i.append(items(item))
    t.append(seconds)
    text = first_text.setdefault(item, {})
    for name in CSV_OPTIONAL:
      if name in col and name not in text and row[col[name]].strip():
        text[name] = row[col[name]]
  if not t:
    raise DataError(f'{path}: no interactions (only a header)')
  log = Log(np.asarray(u, np.int32), np.asarray(i, np.int32), np.asarray(t, np.float64),
            users.names, items.names, str(path))
  titles, fields, refused = {}, {}, {}
  for item in items.names:
    text = first_text.get(item, {})
    if 'title' in col:
      title, reason = titles_lib.clean_title(text.get('title'))
    else:
      title, reason = item, None
    if title is None:
      refused[reason] = refused.get(reason, 0) + 1
    else:
      titles[item] = title
    fields[item] = {'description': titles_lib.clean_text(text.get('description')),
                    'brand': '', 'categories': ''}
  return log, Catalogue(titles, fields, refused, len(items.names))


READERS = {'amazon2018': read_amazon2018, 'amazon2023': read_amazon2023}


def read(source: str, *, reviews=None, meta=None, interactions=None) -> tuple[Log, Catalogue]:
  """The reader of `source` on its files."""
  if source == 'csv':
    return read_csv(pathlib.Path(interactions))
  return READERS[source](pathlib.Path(reviews), pathlib.Path(meta))

