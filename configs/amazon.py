"""Amazon 2018 datasets in MiniOneRec format: get_config('industrial' | 'office'[',hf']).

',hf' is the paper's setting: a pretrained causal LM with SID tokens (pass its folder as
--config.model.hf_path; docs/hf_backbone.md) instead of the SID decoder trained from scratch.
"""

from vstar_jax import default_config


def get_config(arg: str = 'industrial'):
  dataset, _, variant = arg.partition(',')
  if dataset not in ('industrial', 'office') or variant not in ('', 'hf'):
    raise ValueError(f"configs/amazon.py takes industrial or office, optionally with ',hf', "
                     f'got {arg!r}')
  c = default_config.base_config()
  c.dataset = dataset
  default_config.sft_regularisers(c, dataset)
  default_config.rl_recipe(c, dataset)
  if variant == 'hf':
    default_config.hf_recipe(c)
  return c
