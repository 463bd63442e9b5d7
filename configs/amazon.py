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
    # while the anchor alone and the paper's loss at lr 1e-5 keep the SFT start.
    c.rl.w_sft = 1.0
    c.rl.lr = 1e-4
    c.rl.epochs = 4
  else:
    # Industrial valid keeps V-STAR + supervised anchor only with the exact-match `rule` reward,
    # selected on the whole valid split (README, "Industrial: the reward"; seed 0, valid NDCG@10
    # best, start 0.0830): rule 0.0855, ranking 0.0854, ranking+prefix 0.0830 (step 0). On the
    # 1000 valid users of the other configs the same rule run kept its start (noisier reading).
    c.rl.w_sft = 1.0
    c.rl.lr = 1e-4
    c.rl.epochs = 4
    c.rl.reward = 'rule'
    c.rl.valid_max_rows = 0
  return c
