"""Amazon 2018 datasets in MiniOneRec format: get_config('industrial' | 'office')."""

from vstar_jax import default_config


def get_config(arg: str = 'industrial'):
  c = default_config.base_config()
  if arg not in ('industrial', 'office'):
    raise ValueError(f'configs/amazon.py takes industrial or office, got {arg!r}')
  c.dataset = arg
  default_config.small_data_protocol(c)
  if arg == 'office':
    # Office valid prefers lighter regularisation: NDCG@10 0.1366 (history dropout 0.2, dropout
    # 0.1) vs 0.1298 (the Industrial choice above).
    c.sft.history_dropout = 0.2
    c.model.dropout = 0.1
    # Office valid keeps V-STAR + supervised anchor at lr 1e-4 over 4 epochs (README, "Office: the
    # same anchor comparison"; 3 RL seeds): valid NDCG@10 0.1240 -> 0.1276, kept on every seed,
    # while the anchor alone and the paper's loss at lr 1e-5 keep the SFT start. Industrial valid
    # keeps its start under this recipe, so it stays Office's alone.
    c.rl.w_sft = 1.0
    c.rl.lr = 1e-4
    c.rl.epochs = 4
  return c
