"""The stages behind each CLI mode, wired from the config (design §8).

  baseline  -> W/eval/{popularity,transition}_<split>/
  sid       -> W/sid/ (index.json, stats.json, codebook params)
  sft       -> W/checkpoints/sft, W/eval/sft_<split>/   (learns SIDs first if sid.source=learned)
  rl        -> W/checkpoints/rl,  W/eval/rl_<split>/    (runs sft first if it has no checkpoint)
  eval      -> re-evaluates the newest trained stage (into --out when given)
  all       -> baseline, sid (if learned), sft, rl
  (recommend: vstar_jax.recommender)

The stages that train record their config in W/config.json when their training is done
(workdir.record_training); eval and recommend restore from it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

from absl import logging
import ml_collections

from vstar_jax import baselines
from vstar_jax import default_config
from vstar_jax import distributed
from vstar_jax import parallel
from vstar_jax import trained
from vstar_jax import workdir as workdir_lib
from vstar_jax.default_config import ConfigError
from vstar_jax.data import amazon
from vstar_jax.data import batching
from vstar_jax.data import loading
from vstar_jax.data import prepared
from vstar_jax.data import synthetic
from vstar_jax.data import types
from vstar_jax.eval import evaluate
from vstar_jax.eval import export
from vstar_jax.eval import validate as validate_lib
from vstar_jax.model import backbone
from vstar_jax.prepare import sids as prepared_sids
from vstar_jax.rl import loop
from vstar_jax.rl import settings as rl_settings
from vstar_jax.sid import learn
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import plots
from vstar_jax.train import sft


def validate(c: ml_collections.ConfigDict) -> None:
  """Rejects impossible settings before any work starts, naming the flag (each stage's own checks)."""
  if c.mode not in default_config.MODES:
    raise ConfigError('mode', f'{c.mode!r} is not one of {default_config.MODES}')
  loading.validate_config(c)
  learn.validate_config(c.sid)
  backbone.validate_config(c)
  if c.model.backbone == 'sid' and c.model.d_model % c.model.num_heads:
    raise ConfigError('model.d_model', f'{c.model.d_model} is not divisible by '
                      f'model.num_heads={c.model.num_heads}')
  sft.validate_config(c.sft)
  rl_settings.validate_config(c)
  if c.eval.num_beams < 1:
    raise ConfigError('eval.num_beams', f'must be >= 1, got {c.eval.num_beams}')
  if c.eval.batch_size < 1:
    raise ConfigError('eval.batch_size', f'must be >= 1, got {c.eval.batch_size}')
  if c.eval.split not in ('train', 'valid', 'test'):
    raise ConfigError('eval.split', f'{c.eval.split!r} is not train, valid or test')
  if c.eval.decoder not in evaluate.DECODERS:
    raise ConfigError('eval.decoder', f'{c.eval.decoder!r} is not one of {evaluate.DECODERS}')
  if c.eval.ved_multiplier < 1:
    raise ConfigError('eval.ved_multiplier', f'must be >= 1, got {c.eval.ved_multiplier}')
  for name in c.baseline.names:
    if name not in baselines.BASELINES:
      raise ConfigError('baseline.names', f'unknown baseline {name!r}')
  for split in c.baseline.train_splits:
    if split not in ('train', 'valid', 'holdout'):
      raise ConfigError('baseline.train_splits', f'{split!r} is not train, valid or holdout')


def report_catalogue(dataset: types.Dataset) -> None:
  groups = trie_lib.collision_groups(dataset.item_codes)
  logging.info('%s: %d items, %d SID levels, %d SID collision groups (%d items share a SID)',
               dataset.name, dataset.num_items, dataset.num_levels, len(groups),
               sum(len(g) for g in groups))


def load_dataset(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> types.Dataset:
  """The dataset under the SIDs the config asks for (shipped, or learned into W/sid/)."""
  dataset = loading.load(config)
  if config.sid.source == 'learned':
    index = workdir / 'sid' / 'index.json'
    init = config.rl.init_workdir or config.sft.init_workdir
    if not index.exists() and init:  # starting from another run's model: its SIDs too
      index = pathlib.Path(init) / 'sid' / 'index.json'
    if not index.exists() and config.mode in workdir_lib.READ_ONLY_MODES:
      raise FileNotFoundError(f'{index} not found: {workdir} has no learned SIDs to restore')
    if not index.exists():
      run_sid(config, workdir, dataset)
      index = workdir / 'sid' / 'index.json'
    codes = amazon.load_index(index, config.sid.codebook_size)
    if codes.shape[0] != dataset.num_items:
      raise amazon.DataError(f'{index} has {codes.shape[0]} items, the dataset has {dataset.num_items}')
    dataset = dataset.with_item_codes(codes, config.sid.codebook_size)
  if config.model.item_text_features:
    features, source = item_embeddings(config, dataset)
    logging.info('decoder item-feature input: %s %s', source, features.shape)
    dataset = dataclasses.replace(dataset, item_features=features)
  report_catalogue(dataset)
  if config.mode != 'baseline':  # baselines decode nothing: any catalogue size will do
    validate_against_data(config, dataset)
  return dataset


def validate_against_data(config: ml_collections.ConfigDict, dataset: types.Dataset) -> None:
  """Rejects decoding settings the data makes impossible, before any training starts."""
  num_sids = len({tuple(r) for r in dataset.item_codes.tolist()})
  for flag, beams in (('eval.num_beams', config.eval.num_beams), ('sft.valid_beams', config.sft.valid_beams)):
    if beams > num_sids:
      raise ValueError(f'--config.{flag}={beams} exceeds the {num_sids} distinct SIDs of the '
                       f'{dataset.name} catalogue')


def train_rows(dataset: types.Dataset, splits) -> dict:
  """What a stage trained on, for its metrics.json: the splits and their row count."""
  present = [s for s in splits if s in dataset.splits]
  return {'train_splits': present, 'train_rows': int(sum(len(dataset.splits[s]) for s in present))}


def run_baselines(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None) -> dict:
  """Most-popular and transition baselines, fit on baseline.train_splits (those the data has:
  every train row, the RL holdout's included) -> W/eval/<name>_<split>/."""
  dataset = dataset or load_dataset(config, workdir)
  split = config.eval.split
  rows = evaluate.eval_rows(config, len(dataset.splits[split]))
  queries = dataset.splits[split].subset(rows)
  fit = train_rows(dataset, config.baseline.train_splits)
  train = types.concat_splits([dataset.splits[s] for s in fit['train_splits']], 'train')
  results = {}
  for name in config.baseline.names:
    start = time.time()
    codes = baselines.BASELINES[name](train, queries, dataset.item_codes, config.eval.num_beams)
    results[name] = export.evaluate_and_export(
        evaluate.eval_dir(workdir, name, split), codes, dataset.target_sids[split][rows],
        dataset.target_codes(split)[rows], dataset.item_codes,
        {'wall_s': time.time() - start, 'split': split, **fit})
    logging.info('%s on %s %s: HR@10 %.4f NDCG@10 %.4f', name, dataset.name, split,
                 results[name].get('HR@10', float('nan')), results[name].get('NDCG@10', float('nan')))
  return results


def item_embeddings(config: ml_collections.ConfigDict, dataset: types.Dataset):
  """The items' text embeddings [I, E] (the SID stage's input) and where they came from."""
  if config.dataset == 'prepared':
    npy = config.sid.embedding_path or prepared.embedding_file(config.data_dir, config.data.name)
    return learn.load_item_embeddings(config.data_dir, config.data.name, embedding_path=npy,
                                      text_dim=config.sid.text_dim, seed=config.sid.seed)
  if dataset.name == 'synthetic':
    return synthetic.item_embeddings(dataset, seed=config.seed), 'synthetic'
  data_dir = amazon.resolve_data_dir(config.data_dir or None)
  return learn.load_item_embeddings(
      data_dir, amazon.DATASETS[dataset.name], embedding_path=config.sid.embedding_path or None,
      text_dim=config.sid.text_dim, seed=config.sid.seed)


def run_sid(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None) -> dict:
  """Learns a collision-free codebook from item embeddings -> W/sid/."""
  if config.dataset == 'prepared':
    return run_prepared_sid(config, workdir)
  dataset = dataset or loading.load(config)
  embeddings, source = item_embeddings(config, dataset)
  shipped = learn.code_stats(dataset.item_codes, dataset.num_codes, embeddings)
  _, stats = learn.learn_sids(embeddings, config.sid, str(workdir), embedding_source=source,
                              extra_stats={'shipped': shipped})
  workdir_lib.record_training(workdir, config)
  logging.info('SIDs: level-1 utilization shipped %.3f -> ours %.3f; collisions shipped %d -> ours %d',
               shipped['utilization'][0], stats['after']['utilization'][0],
               shipped['collision_groups'], stats['collisions_after'])
  return stats


def run_prepared_sid(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """Learns SIDs for a prepared dataset -> W/sid/, and writes them into its index, CSVs and info."""
  embeddings, source = item_embeddings(config, None)
  codes, stats = learn.learn_sids(embeddings, config.sid, str(workdir), embedding_source=source)
  if distributed.is_writer():
    prepared_sids.write_sids(config.data_dir, config.data.name, codes)
  distributed.barrier('prepared_sids')
  loading.load(config)  # the rewritten files pass the loader's validation
  workdir_lib.record_training(workdir, config)
  return stats


def plot_stage(workdir: pathlib.Path, stage: str, keys: list[str], dataset: types.Dataset,
               valid: ml_collections.ConfigDict, kept_step: int | None) -> None:
  """W/plots/<stage>_curves.png: the curves, the kept step, and the baselines on the valid rows.

  valid: the stage's config section (its valid_split, valid_max_rows, valid_beams).
  """
  if not distributed.is_writer():
    return
  records = metrics_log.MetricsLog(workdir).read(stage)
  rows = batching.validation_rows(len(dataset.splits[valid.valid_split]), valid.valid_max_rows)
  references = validate_lib.baseline_metrics(dataset, valid.valid_split, rows, valid.valid_beams)
  path = plots.plot_curves(records, keys, workdir / 'plots' / f'{stage}_curves.png',
                           f'{stage} training', kept_step, references)
  if path:
    logging.info('wrote %s', path)


def run_sft(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None) -> dict:
  """Trains the decoder (resuming if W has a checkpoint), then evaluates -> W/eval/sft_<split>/."""
  dataset = dataset or load_dataset(config, workdir)
  init_params = None
  if config.sft.init_workdir:
    init_params = trained.restore_sft_from(config, 'sft.init_workdir', config.sft.init_workdir,
                                           dataset).params
  elif config.model.backbone == 'hf' and not (workdir / 'checkpoints' / sft.STAGE).exists():
    init_params = trained.pretrained(config, dataset).params
  start = time.time()
  result = sft.train(config, dataset, workdir, init_params=init_params)
  train_wall = time.time() - start
  workdir_lib.record_training(workdir, config)
  plot_stage(workdir, sft.STAGE, ['loss', 'acc_L1', 'acc_L3', 'valid_NDCG@10', 'valid_HR@10'],
             dataset, config.sft, result.best_step)
  extra = {'train_wall_s': train_wall, 'train_steps': result.steps,
           **train_rows(dataset, config.sft.train_splits), 'seed': config.seed,
           'init_workdir': config.sft.init_workdir, 'holdout': config.data.holdout,
           'checkpoint_step': result.best_step,
           'best_valid_NDCG@10': result.best_valid.get(sft.BEST_METRIC)}
  return evaluate.evaluate_params(config, workdir, dataset, result.params, result.cfg, 'sft', extra)


def run_eval(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None,
             out: pathlib.Path | None = None) -> dict:
  """Re-evaluates the newest trained stage of W -> out/eval/<stage>_<split>/ (out: W by default)."""
  dataset = dataset or load_dataset(config, workdir)
  kept = trained.restore_newest(config, workdir, dataset)
  return evaluate.evaluate_params(config, out or workdir, dataset, kept.params, kept.cfg, kept.stage,
                                  {'checkpoint_step': kept.step})


def run_export(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None,
               out: pathlib.Path | None = None) -> pathlib.Path:
  """The newest model of W as a Hugging Face folder -> out/export/hf/ (safetensors, config.json,
  the tokenizer with the SID tokens): transformers and serving engines load it as it is."""
  if config.model.backbone != 'hf':
    raise ConfigError('mode', 'export writes a Hugging Face folder: it needs '
                      '--config.model.backbone=hf (the SID decoder has no such architecture)')
  dataset = dataset or load_dataset(config, workdir)
  kept = trained.restore_newest(config, workdir, dataset)
  path = pathlib.Path(out or workdir) / 'export' / 'hf'
  if distributed.is_writer():
    backbone.export(parallel.to_host(kept.params), kept.cfg, path)
    logging.info('exported the %s model (step %d) to %s', kept.stage, kept.step, path)
  return path


FINAL_RL_STAGE = 'rl_final'  # W/eval/rl_final_<split>/: the last RL step, when it is not the kept one


def run_rl(config: ml_collections.ConfigDict, workdir: pathlib.Path, dataset=None) -> dict:
  """V-STAR RL from the SFT checkpoint (training SFT first if there is none) -> W/eval/rl_<split>/."""
  dataset = dataset or load_dataset(config, workdir)
  if config.rl.init_workdir:
    start_from = trained.restore_sft_from(config, 'rl.init_workdir', config.rl.init_workdir, dataset)
  else:
    start_from = trained.restore(config, workdir, dataset, sft.STAGE)
  if start_from is None:
    logging.info('rl: no SFT checkpoint in %s; running sft first', workdir)
    run_sft(config, workdir, dataset)
    start_from = trained.restore(config, workdir, dataset, sft.STAGE)
  sft_params, cfg = start_from.params, start_from.cfg
  item_emb = item_embeddings(config, dataset)[0] if config.rl.use_item_embeddings else None
  start = time.time()
  result = loop.train(config, dataset, workdir, sft_params, cfg, item_emb=item_emb)
  train_wall = time.time() - start
  workdir_lib.record_training(workdir, config)
  plot_stage(workdir, loop.STAGE, ['loss', 'reward_mean', 'rollout_hit', 'nonzero_adv_groups',
                                   'sibling_nonzero_L1', 'sibling_nonzero_L2',
                                   'sibling_nonzero_L3', 'kl', 'valid_NDCG@10'],
             dataset, config.rl, result.best_step)
  r = config.rl
  rollout_rows, sft_rows = train_rows(dataset, r.train_splits), train_rows(dataset, config.sft.train_splits)
  extra = {'rl_wall_s': train_wall, 'rl_steps': result.steps, 'seed': config.seed,
           'rl_train_splits': rollout_rows['train_splits'], 'rl_train_rows': rollout_rows['train_rows'],
           'sft_train_splits': sft_rows['train_splits'], 'sft_train_rows': sft_rows['train_rows'],
           'init_workdir': r.init_workdir,
           'rollout': r.rollout, 'w_sib': r.w_sib, 'reward': r.reward, 'group_size': r.group_size,
           'ved_multiplier': config.ved.multiplier, 'best_valid_NDCG@10': result.best_valid.get(loop.BEST_METRIC),
           'best_step': result.best_step, 'sft_checkpoint_step': start_from.step}
  if result.final_params is not None and result.best_step != result.steps:
    # The kept policy is an earlier step (step 0 = the SFT policy when RL never beat it on
    # valid): also score what RL ended with, so ablations compare what each variant learned.
    evaluate.evaluate_params(config, workdir, dataset, result.final_params, cfg, FINAL_RL_STAGE, extra)
  return evaluate.evaluate_params(config, workdir, dataset, result.params, cfg, 'rl', extra)


def run_all(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  dataset = load_dataset(config, workdir)
  run_baselines(config, workdir, dataset)
  run_sft(config, workdir, dataset)
  run_rl(config, workdir, dataset)


STAGES = {'baseline': run_baselines, 'sid': run_sid, 'sft': run_sft, 'rl': run_rl, 'all': run_all}


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path,
        out: pathlib.Path | None = None) -> None:
  """The stage of config.mode (but recommend); eval writes into `out` (default W)."""
  if config.mode == 'eval':
    run_eval(config, workdir, out=out)
  elif config.mode == 'export':
    run_export(config, workdir, out=out)
  else:
    STAGES[config.mode](config, workdir)
