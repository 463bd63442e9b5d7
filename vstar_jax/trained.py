"""The trained models of a workdir: the kept SFT or RL policy, restored onto this run's devices.

eval, recommend, RL's start (`rl.init_workdir`), continued SFT (`sft.init_workdir`) and the
benchmarks all read a workdir's model through `restore` / `restore_newest`, which also say
which checkpoint step they restored (after a corrupt step fell back to an older one, that step
is what was scored: evaluate writes it into metrics.json as `checkpoint_step`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from absl import logging
import jax

from vstar_jax.data import types
from vstar_jax.model import backbone
from vstar_jax.rl import loop
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import sft

STAGES = (loop.STAGE, sft.STAGE)  # newest first
PRETRAINED = 'pretrained'  # the hf backbone's checkpoint as it is (W/eval/pretrained_<split>/)


@dataclasses.dataclass(frozen=True)
class Restored:
  """A kept policy: its params (replicated on this run's mesh), static model config, stage, step."""
  params: Any
  cfg: Any  # model.backbone.model_config
  stage: str
  step: int


def restore(config, workdir: pathlib.Path, dataset: types.Dataset, stage: str) -> Restored | None:
  """`stage`'s best checkpoint in W (latest if none is ranked), or None if W has none. Read-only:
  nothing in W is created, renamed or cleaned up."""
  directory = pathlib.Path(workdir) / 'checkpoints' / stage
  if not directory.exists():
    return None
  cfg = backbone.model_config(config, dataset)
  try:
    if stage == loop.STAGE:
      template = jax.eval_shape(lambda: backbone.init_params(cfg, jax.random.key(0)))
      found = loop.restore_best(config, workdir, template)
      return None if found is None else Restored(found[0], cfg, stage, found[1])
    ckpt = checkpoint_lib.Checkpointer(directory, best_metric=sft.BEST_METRIC, read_only=True)
    try:
      template = sft.state_template(config, dataset)
      found = ckpt.restore_best(template) or ckpt.restore_latest(template)
    finally:
      ckpt.close()
  except RuntimeError as e:
    raise checkpoint_lib.config_mismatch(directory, e) from e
  return None if found is None else Restored(sft.eval_params(found[0]), cfg, stage,
                                             found[1]['step'])


def restore_sft_from(config, flag: str, init: str, dataset: types.Dataset) -> Restored:
  """The kept SFT model of workdir `init` (set by --config.<flag>); a clear error if it has none."""
  restored = restore(config, pathlib.Path(init), dataset, sft.STAGE)
  if restored is None:
    raise FileNotFoundError(f'--config.{flag}={init}: no SFT checkpoint under '
                            f'{init}/checkpoints/{sft.STAGE}; run --config.mode=sft there first')
  logging.info('%s: starting from the SFT checkpoint of %s (step %d)', flag.split('.')[0], init,
               restored.step)
  return restored


def pretrained(config, dataset: types.Dataset) -> Restored:
  """The hf backbone's checkpoint (config.model.hf_path) as it is, SID tokens added, V and Q heads
  freshly initialised (seed config.seed)."""
  cfg = backbone.model_config(config, dataset)
  params = backbone.pretrained_params(cfg, dataset.item_codes, jax.random.key(config.seed))
  logging.info('the pretrained %s backbone of %s (%d-token vocabulary with the SID tokens)',
               cfg.lm.model_type, cfg.source, cfg.lm.vocab_size)
  return Restored(params, cfg, PRETRAINED, 0)


def restore_newest(config, workdir: pathlib.Path, dataset: types.Dataset) -> Restored:
  """The newest trained stage of W (rl if it has one, else sft; with the hf backbone and no
  checkpoint, its pretrained weights as they are: MiniOneRec's evaluate.py on them)."""
  for stage in STAGES:
    restored = restore(config, workdir, dataset, stage)
    if restored is not None:
      return restored
  if config.model.backbone == 'hf':
    return pretrained(config, dataset)
  raise FileNotFoundError(f'no checkpoint under {workdir}/checkpoints: run --config.mode=sft first')
