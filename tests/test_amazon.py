"""Loader tests: exact row counts on the real data, and one test per malformed-input class."""

import pathlib

import numpy as np
import pytest

import amazon_fixture
from vstar_jax.data import amazon
from vstar_jax.data import sid_strings
from vstar_jax.sid import trie as trie_lib

STEM = amazon_fixture.STEM


@pytest.fixture
def tiny(tmp_path):
  return amazon_fixture.write(tmp_path / 'data')


def test_tiny_dataset_parses_to_padded_arrays(tiny):
  ds = amazon.load_dataset('industrial', tiny, max_history=4)
  test = ds.splits['test']
  np.testing.assert_array_equal(test.history_items, [[0, 1, 2, 3], [-1, 3, 0, 1]])
  np.testing.assert_array_equal(test.history_len, [4, 3])
  np.testing.assert_array_equal(test.target_item, [4, 2])
  np.testing.assert_array_equal(ds.history_codes('test')[1, 0], [-1, -1, -1])
  np.testing.assert_array_equal(ds.target_codes('test'), [[7, 0, 0], [1, 5, 0]])
  assert list(ds.target_sids['test']) == ['<a_7><b_0><c_0>', '<a_1><b_5><c_0>']
  assert ds.item_titles[0] == 'Drill, "cordless"'


def test_data_dir_from_environment(tiny, monkeypatch):
  monkeypatch.setenv(amazon.DATA_DIR_ENV, str(tiny))
  assert len(amazon.load_dataset('industrial', max_history=4).splits['valid']) == 2
  monkeypatch.delenv(amazon.DATA_DIR_ENV)
  with pytest.raises(amazon.DataError, match='VSTAR_DATA_DIR'):
    amazon.load_dataset('industrial')


def _rewrite(path: pathlib.Path, old: str, new: str):
  text = path.read_text(encoding='utf-8')
  assert old in text
  path.write_text(text.replace(old, new, 1), encoding='utf-8')


def test_missing_file(tiny):
  (tiny / 'valid' / f'{STEM}.csv').unlink()
  with pytest.raises(amazon.DataError, match=r'missing file: .*valid/.*\.csv'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_missing_column(tiny):
  _rewrite(tiny / 'test' / f'{STEM}.csv', 'item_sid\n', 'sid\n')
  with pytest.raises(amazon.DataError, match=r"test/.*\.csv: line 1: missing column\(s\) \['item_sid'\]"):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_malformed_list_names_line_and_field(tiny):
  _rewrite(tiny / 'train' / f'{STEM}.csv', '"[0, 1]"', '"[0, 1"')
  with pytest.raises(amazon.DataError, match=r'train/.*: line 3 \(data row 2\), field history_item_id'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_list_literal_is_not_evaluated(tiny):
  _rewrite(tiny / 'train' / f'{STEM}.csv', '"[0, 1]"', '"__import__(\'os\').getcwd()"')
  with pytest.raises(amazon.DataError, match='field history_item_id: not a Python-literal list'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_bad_sid_token(tiny):
  _rewrite(tiny / 'valid' / f'{STEM}.csv', ',<a_7><b_0><c_0>', ',<a_7><b_0><c_999>')
  with pytest.raises(amazon.DataError, match=r'valid/.*line 2 \(data row 1\), field item_sid: SID .* not in index'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_sid_of_another_item(tiny):
  _rewrite(tiny / 'valid' / f'{STEM}.csv', ',<a_7><b_0><c_0>', ',<a_1><b_2><c_3>')
  with pytest.raises(amazon.DataError, match=r'field item_sid: SID .* is not the SID of item 3'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_unknown_item_id(tiny):
  _rewrite(tiny / 'test' / f'{STEM}.csv', ',4,', ',99,')
  with pytest.raises(amazon.DataError, match=r'line 2 \(data row 1\), field item_id: unknown item id 99'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_history_longer_than_maximum(tiny):
  with pytest.raises(amazon.DataError, match=r'test/.*line 2 \(data row 1\), field history_item_id: history has 4 items, more than max_history=3'):
    amazon.load_dataset('industrial', tiny, max_history=3)


def test_empty_history(tiny):
  rows = dict(amazon_fixture.ROWS)
  bad = amazon_fixture.row('U9', [0], 1)
  bad[3], bad[5], bad[1] = '[]', '[]', '[]'
  rows['valid'] = [bad]
  amazon_fixture.write(tiny, rows)
  with pytest.raises(amazon.DataError, match='field history_item_id: empty history'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_truncated_row(tiny):
  path = tiny / 'train' / f'{STEM}.csv'
  path.write_text(path.read_text(encoding='utf-8').rsplit(',', 2)[0] + '\n', encoding='utf-8')
  with pytest.raises(amazon.DataError, match=r'line 4 \(data row 3\): 5 fields, header has 7'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_non_utf8_bytes(tiny):
  path = tiny / 'test' / f'{STEM}.csv'
  data = path.read_bytes().replace(b'Bits', b'Bi\xff\xfets', 1)
  path.write_bytes(data)
  with pytest.raises(amazon.DataError, match=r'test/.*: line 2: bytes .* are not valid UTF-8'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_utf8_bom_files_load_as_without_it(tiny):
  """Spreadsheet tools start CSV / JSON / txt exports with a BOM: each file is read through it."""
  plain = amazon.load_dataset('industrial', tiny, max_history=4)
  files = amazon.dataset_files(tiny, 'industrial')
  for key in ('train', 'valid', 'test', 'info', 'index'):
    files[key].write_bytes(b'\xef\xbb\xbf' + files[key].read_bytes())
  bom = amazon.load_dataset('industrial', tiny, max_history=4)
  np.testing.assert_array_equal(bom.item_codes, plain.item_codes)
  assert list(bom.item_titles) == list(plain.item_titles)
  assert list(bom.splits['test'].user_ids) == ['U1', 'U2']
  data = files['test'].read_bytes().replace(b'Bits', b'Bi\xffts', 1)
  files['test'].write_bytes(data)  # bad bytes after a BOM: still the right line
  with pytest.raises(amazon.DataError, match=r'line 2: bytes .* are not valid UTF-8'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_empty_file(tiny):
  (tiny / 'valid' / f'{STEM}.csv').write_text('')
  with pytest.raises(amazon.DataError, match=r'valid/.*: file is empty'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_mismatched_index_and_info(tiny):
  _rewrite(tiny / 'info' / f'{STEM}.txt', '<a_1><b_5><c_0>\tSaw', '<a_1><b_5><c_1>\tSaw')
  with pytest.raises(amazon.DataError, match=r'info/.*: line 3: field SID .* disagrees with index.json'):
    amazon.load_dataset('industrial', tiny, max_history=4)


def test_skip_mode_drops_only_bad_rows(tiny):
  _rewrite(tiny / 'train' / f'{STEM}.csv', '"[0, 1]"', '"[0, 1"')
  ds = amazon.load_dataset('industrial', tiny, max_history=4, on_bad_row='skip')
  assert len(ds.splits['train']) == 2
  np.testing.assert_array_equal(ds.splits['train'].target_item, [1, 0])


@pytest.mark.realdata
@pytest.mark.parametrize('name,counts', [
    ('industrial', {'train': 10393, 'valid': 4532, 'test': 4533}),
    ('office', {'train': 9484, 'valid': 4866, 'test': 4866}),
])
def test_real_data_counts_targets_and_collisions(data_dir, name, counts):
  ds = amazon.load_dataset(name, data_dir)
  for split, n in counts.items():
    assert len(ds.splits[split]) == n
    # Every target SID string resolves through the trie to a leaf holding the target item.
    trie = trie_lib.build_trie(ds.item_codes, ds.num_codes)
    codes = np.array([sid_strings.parse_sid(s, 3, 256) for s in ds.target_sids[split]])
    nodes = np.asarray(trie_lib.lookup(trie, codes))
    assert (nodes >= 0).all() and (trie.depth[nodes] == 3).all()
    assert all(t in trie.leaf_items[n] for n, t in zip(nodes, ds.splits[split].target_item))
  assert len(trie_lib.collision_groups(ds.item_codes)) == 15
  assert len(np.unique(ds.item_codes[:, 0])) == {'industrial': 48, 'office': 88}[name]
