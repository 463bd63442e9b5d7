"""Shared pytest fixtures: the real-data directory and small synthetic data."""

import os
import pathlib

import pytest

_SIBLING_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'amazon'


def real_data_dir():
  """VSTAR_DATA_DIR if set, else the shared checkout beside the repo, else None."""
  env = os.environ.get('VSTAR_DATA_DIR')
  if env:
    return pathlib.Path(env)
  return _SIBLING_DATA if _SIBLING_DATA.is_dir() else None


@pytest.fixture(scope='session')
def data_dir():
  path = real_data_dir()
  if path is None or not path.is_dir():
    pytest.skip('real Amazon data not found: set VSTAR_DATA_DIR')
  return path
