"""The summary of a prepared dataset: what was read, kept and dropped, and the splits' time ranges."""

from __future__ import annotations

import datetime

import numpy as np


def iso(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(float(seconds), datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M:%S')


def summary(*, source: str, files: dict, log, catalogue, window, user_k: int, item_k: int,
            max_history: int, passes: list, seq, samples) -> dict:
  """Plain-JSON stats of one prepare run (printed and saved as DIR/NAME.stats.json)."""
  num_users, num_items, num_inter = len(seq.user_code), len(seq.item_code), len(seq.user)
  splits = {}
  for name, (lo, hi) in samples.bounds.items():
    times = samples.time[lo:hi]
    splits[name] = {'samples': hi - lo,
                    'users': int(len(np.unique(samples.user[lo:hi]))),
                    'first_target_time': iso(times.min()) if hi > lo else None,
                    'last_target_time': iso(times.max()) if hi > lo else None}
  return {
      'source': source, 'files': {k: str(v) for k, v in files.items() if v},
      'raw': {'interactions': int(len(log.user)), 'users': len(log.user_names),
              'items': len(log.item_names), 'metadata_entries': catalogue.num_entries,
              'items_with_usable_title': len(catalogue.titles),
              'items_without_metadata': len(set(log.item_names) - set(catalogue.fields)),
              'titles_refused': dict(sorted(catalogue.refused.items()))},
      'window': window.text, 'user_k': user_k, 'item_k': item_k, 'max_history': max_history,
      'k_core_passes': [{'users': p.users, 'items': p.items, 'interactions': p.interactions}
                        for p in passes],
      'users': num_users, 'items': num_items, 'interactions': num_inter,
      'density': num_inter / (num_users * num_items),
      'time_range': [iso(seq.time.min()), iso(seq.time.max())],
      'samples': int(len(samples.target)), 'splits': splits,
  }


def describe(stats: dict) -> str:
  """A few human lines of `summary`'s dict."""
  lines = [f"{stats['users']} users, {stats['items']} items, {stats['interactions']} interactions "
           f"(density {stats['density']:.2e}) after {len(stats['k_core_passes'])} k-core passes "
           f"(user_k {stats['user_k']}, item_k {stats['item_k']}, window {stats['window']}); "
           f"read {stats['raw']['interactions']} interactions"]
  for name, s in stats['splits'].items():
    lines.append(f"  {name}: {s['samples']} samples, {s['users']} users, targets "
                 f"{s['first_target_time']} .. {s['last_target_time']}")
  return '\n'.join(lines)
