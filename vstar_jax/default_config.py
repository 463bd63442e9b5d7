"""Defaults shared by every config file; `configs/*.py` override what differs.

Pure data: this module imports nothing of vstar_jax (nor JAX), so reading a config file
is instant. Each stage validates its own part where its settings are used
(`pipeline.validate` runs them all before any work starts).
"""

from __future__ import annotations

import ml_collections

MODES = ('baseline', 'sid', 'sft', 'rl', 'eval', 'recommend', 'export', 'all')


def sid_config() -> ml_collections.ConfigDict:
  """config.sid: 3 levels of 256 codes, balanced residual k-means, collision-free.

  Balanced residual k-means is the default because on both datasets' sentence embeddings
  it reconstructs them better than the RQ-VAE trained for a CPU-affordable 1500 steps
  (mean squared error 0.30 vs 0.40 on Industrial, 0.24 vs 0.33 on Office), in ~10 s
  instead of minutes, with the same near-uniform code use (level-1 perplexity ~250 of
  256); `method='rqvae'` selects the RQ-VAE (the MiniOneRec / TIGER tokenizer).
  """
  c = ml_collections.ConfigDict()
  c.source = 'given'     # 'given': the dataset's shipped SIDs; 'learned': W/sid/ (learned if absent)
  c.embedding_path = ''  # A user .npy [num_items, D]; '' = the dataset's sentence embeddings,
  # else a TF-IDF + SVD embedding of the item text.
  c.text_dim = 128  # Width of the TF-IDF + SVD fallback embedding.
  c.method = 'kmeans'  # 'kmeans' (residual k-means on the embeddings) | 'rqvae'.
  c.num_levels = 3
  c.codebook_size = 256
  c.disambiguation = 'reassign'  # 'reassign' (keep L codes) | 'extra_level' (L + 1 codes).
  c.seed = 0
  c.kmeans_iters = 20  # Lloyd steps per level (converged by ~12 on the Amazon embeddings).
  c.sinkhorn_iters = 20  # Balanced-assignment iterations; 0 = nearest code.
  c.sinkhorn_eps = 0.05
  c.steps = 1500  # RQ-VAE training steps.
  c.batch_size = 1024
  c.lr = 1e-3
  c.hidden_dims = (512, 256)
  c.latent_dim = 32
  c.commitment = 0.25
  c.reseed_every = 200  # RQ-VAE steps between dead-code re-seeding; 0 = never.
  return c


def ved_config() -> ml_collections.ConfigDict:
  """config.ved: Value-Guided Efficient Decoding (decode.ved.VedConfig; docs/method.md, "VED").

  Read by the RL rollouts (rl.rollout='ved', G = rl.group_size), by --config.eval.decoder=ved
  (budget multiplier eval.ved_multiplier, G = eval.num_beams) and by the Recommender's
  decoder='ved'. A decoding choice: eval and recommend take the command's, not the record's.
  decode.ved.VedConfig's defaults are these (tests/test_defaults.py).
  """
  c = ml_collections.ConfigDict()
  c.width = 8              # w, stage-1 beam width (paper Sec. 4.2)
  c.multiplier = 2.0       # m: budget floor(m (1 + (L-1) w)) = 34 forwards ~ beam-16's 33
  c.lam = 0.1              # lambda in G = V + lambda H (Eq. 11)
  c.beta = 1.0             # exploration weight of the selection rule (Eq. 13)
  # decode.selection.RULES: 'ucb' (the paper's Eq. 13-14) | 'puct' | 'best_first' | 'lookahead'.
  # 'lookahead' was chosen on valid (docs/results/ved.md): at equal forwards it matches or
  # passes beam on both datasets; 'ucb' falls below beam because V carries no signal here.
  c.selection = 'lookahead'
  c.leaf_ranking = 'logprob'  # 'logprob' | 'value' (Q) | 'mix' (logprob + mix * Q)
  c.mix = 1.0              # weight of Q in the 'mix' leaf ranking
  c.per_step = 16          # k pairs per stage-2 iteration (0: w); 2w: fewer, wider forwards,
                           # same hits on valid, VED within 1.5x beam's time
  c.lookahead_weight = 0.5  # 'lookahead' rule: weight of the log-prob still to come
  return c


def rl_config() -> ml_collections.ConfigDict:
  """config.rl: every knob of the RL stage (docs/method.md), with the reason for its default."""
  c = ml_collections.ConfigDict()
  c.train_splits = ('train',)  # users the rollouts are drawn from (as sft.train_splits)
  # Workdir whose SFT checkpoint (and learned SIDs) RL starts from; '' = this run's workdir.
  # Lets a sweep share one SFT model across every RL seed and knob instead of retraining it.
  c.init_workdir = ''
  c.valid_split = 'valid'
  # Rollout: a name of rl.rollouts.ROLLOUTS.
  c.rollout = 'ved'            # 'ved' (V-STAR) | 'beam' (G beams: MiniOneRec's rollouts) |
                               # 'sample' (G SIDs sampled from the constrained policy)
  c.group_size = 16            # G candidates per user (MiniOneRec / V-STAR group size)
  # Reward (a name of rl.rewards.REWARDS; the simulator benchmarks add rl.simulator_reward's
  # 'preference') and advantages.
  c.reward = 'ranking'         # 'ranking' | 'rule' | 'prefix' | 'ranking+prefix' (MiniOneRec: ranking)
  # True: a group missing the logged target gets it in its last slot (rl.rollouts.inject_target;
  # off-policy guidance, not in the paper: held-out users' groups rarely hold a hit).
  c.inject_target = False
  c.w_sib = 1.0                # sibling loss weight (0: plain GRPO)
  c.alpha = -1.0               # -1: off; in [0, 1]: per-token alpha*group + (1-alpha)*sibling
  c.prefix_weights = (0.3, 0.5, 1.0)  # w_l of the dense prefix reward (paper Sec. 3.3)
  c.gamma = 0.99                      # TD discount of the value targets
  c.use_item_embeddings = False  # prefix miss penalty -w_l (1 - cos(emb(pred), emb(target)))
  c.value_target = 'dense_prefix'  # what V / Q learn: the dense prefix reward, or 'rl_reward':
                                  # the RL reward at the leaf (the simulator's true preference)
  # Loss and optimizer.
  c.kl_beta = 1e-3             # weight of KL(pi || pi_ref), k3 estimator
  c.w_value = 0.5              # weight of the value-head MSE
  # What the value loss trains: 'all' (the heads and the shared backbone, the paper's single
  # network) | 'heads' (its gradient stopped at the backbone; docs/results/simulator.md, KL).
  c.value_grad = 'all'
  # Supervised anchor: + w_sft * NLL of the rollout users' logged targets (0: the paper's loss;
  # docs/method.md, "Supervised anchor"; not in the paper).
  c.w_sft = 0.0
  c.w_pg = 1.0                 # weight of GRPO + sibling PG; 0 with w_sft > 0: anchor-only control
  # History dropout on the anchor's inputs (sft.history_dropout's augmentation; 0: off): the
  # anchor is an SFT loss on few rows, which the SFT stage itself only fits regularised.
  c.anchor_history_dropout = 0.0
  # Scale of negative advantages in the PG terms: 1 the paper; 0 only pushes candidates up
  # (docs/method.md, "Negative advantages"; not in the paper).
  c.negative_weight = 1.0
  c.clip_eps = 0.2             # PPO clip
  c.lr = 1e-4                  # synthetic check (30 it.): 1e-5 no effect, 3e-4 best, 1e-2 diverges
  c.warmup_steps = 10
  c.weight_decay = 0.0         # RL fine-tuning: no pull towards 0 besides the KL to the reference
  c.clip_norm = 1.0
  # Schedule.
  c.batch_users = 64           # users per iteration (global; divisible by the device count)
  c.steps = 300                # iterations; set exactly one of steps and epochs (the other 0)
  c.epochs = 0                 # > 0: this many passes over the rollout rows (then steps = 0)
  c.updates_per_rollout = 1    # PPO epochs per rollout (1: on-policy, ratio 1, as MiniOneRec)
  c.log_every = 1
  c.valid_every = 50
  c.valid_max_rows = 2000
  c.valid_beams = 20
  c.checkpoint_every = 25
  # Value-head pretraining on SFT rollouts (SFT never trains V, which VED ranks by).
  c.value_pretrain_steps = 100
  c.value_pretrain_lr = 1e-3   # synthetic check: 3e-3 oscillates, 3e-4 slower
  # What pretraining fits V and Q on: 'rollouts' (the paper: the SFT policy's own groups) or
  # 'catalogue' (every item's path, rewards computed for items no rollout reaches;
  # docs/method.md, "Value coverage").
  c.value_coverage = 'rollouts'
  return c


def distributed_config() -> ml_collections.ConfigDict:
  """config.distributed: how the processes of a multi-process run find each other (design §6).

  Passed to jax.distributed.initialize; every empty (None / '') value is read from the
  cluster environment (Cloud TPU, SLURM, ...). launch/local_multiprocess.py, launch/gpu.sh
  and launch/tpu_pod.sh set them (launch/README.md).
  """
  c = ml_collections.ConfigDict()
  c.enabled = False            # join a multi-process run (jax.distributed.initialize)
  c.coordinator = ''           # host:port of process 0's coordination service
  c.num_processes = ml_collections.FieldReference(None, field_type=int)
  c.process_id = ml_collections.FieldReference(None, field_type=int)
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every knob of the pipeline, overridable as --config.x=y."""
  c = ml_collections.ConfigDict()
  c.mode = 'all'
  c.dataset = 'synthetic'      # 'industrial' | 'office' | 'synthetic'
  c.data_dir = ''              # empty: $VSTAR_DATA_DIR
  c.seed = 0
  c.distributed = distributed_config()

  c.data = ml_collections.ConfigDict()
  c.data.name = ''             # dataset='prepared': the NAME of DIR/NAME (configs/prepared.py)
  c.data.max_history = 10
  c.data.on_bad_row = 'error'  # 'error' | 'skip' (skip logs and counts bad rows)
  # RL holdout (data/holdout.py): the last train row of this fraction of the users moves out
  # of SFT into split 'holdout' (0: none), for RL rollouts (rl.train_splits=('holdout',)).
  c.data.holdout = 0.0
  c.data.holdout_seed = 0      # which users: fixed across model seeds, so runs are comparable

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_items = 400
  c.synthetic.num_users = 600
  c.synthetic.num_codes = 16
  # Share of users who walk the planted item cycle backwards (data.synthetic): which way a user
  # walks needs two history items, so a sequence model beats the first-order transition baseline.
  c.synthetic.reverse_users = 0.0

  c.sid = sid_config()

  c.baseline = ml_collections.ConfigDict()
  c.baseline.names = ('popularity', 'transition')
  # Rows the baselines count (those the data has): every train row, the RL holdout included.
  c.baseline.train_splits = ('train', 'holdout')

  c.model = ml_collections.ConfigDict()
  # 'sid': the decoder over SID codes trained from scratch (the knobs below); 'hf': a pretrained
  # Hugging Face causal LM (Qwen2 / Qwen2.5 / Llama) from model.hf_path with MiniOneRec's SID
  # tokens and prompts (docs/hf_backbone.md; its size comes from the checkpoint).
  c.model.backbone = 'sid'
  c.model.hf_path = ''         # backbone 'hf': a folder with config.json, *.safetensors, tokenizer.json
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.d_ff = 512
  c.model.dropout = 0.1
  c.model.tie_embeddings = True
  c.model.dtype = 'float32'
  c.model.item_hash_buckets = 4096  # >0: hashed item-identity embeddings (see DecoderConfig)
  c.model.item_text_features = False  # history items also get their (frozen) text embedding, projected

  c.sft = ml_collections.ConfigDict()
  c.sft.train_splits = ('train',)   # ('train', 'valid'): the labelled train+valid refit
  c.sft.epochs = 20
  c.sft.batch_size = 128
  c.sft.lr = 1e-3
  c.sft.warmup_steps = 200
  c.sft.weight_decay = 0.1
  c.sft.clip_norm = 1.0
  c.sft.b1 = 0.9
  c.sft.b2 = 0.98
  c.sft.label_smoothing = 0.0
  c.sft.ema_decay = 0.0             # > 0: validate, keep and export an EMA of the weights
  c.sft.history_dropout = 0.0       # P(mask a history item, never the last) per train example
  # LM backbone: MiniOneRec's SFT tasks (model/sft_tasks.py); its full mixture is
  # ('next_sid', 'sid2title', 'title2sid', 'history2title'). The SID decoder: next_sid only.
  c.sft.tasks = ('next_sid',)
  c.sft.log_every_steps = 20
  c.sft.checkpoint_every_steps = 500
  c.sft.valid_split = 'valid'
  c.sft.valid_max_rows = 1000
  c.sft.valid_beams = 20
  c.sft.keep_best = True
  # Workdir whose kept SFT model this run starts from ('' = a fresh init): continued SFT, e.g.
  # on the RL holdout rows (sft.train_splits=('holdout',)), the control RL is compared with.
  c.sft.init_workdir = ''

  c.rl = rl_config()
  c.ved = ved_config()

  c.eval = ml_collections.ConfigDict()
  c.eval.num_beams = 50
  c.eval.batch_size = 32
  c.eval.split = 'test'
  c.eval.max_rows = 0          # 0: every row of the split; else this many evenly spaced rows
  c.eval.decoder = 'beam'      # 'beam' (MiniOneRec's contract) | 'ved' (config.ved, budget below)
  # VED budget multiplier when decoding with VED: 5.8 * 17 = 98 forwards ~ beam-50's 99 live
  # forwards on Industrial (1 + 48 level-1 codes + 50).
  c.eval.ved_multiplier = 5.8

  c.recommend = ml_collections.ConfigDict()
  c.recommend.history = ''     # comma-separated item ids; empty: the first rows of eval.split
  c.recommend.top_n = 10
  c.recommend.num_rows = 5
  return c


# Where the Amazon datasets' recipes differ; a prepared dataset gets Industrial's.
_SFT_BY_DATASET = {
    # Chosen on Industrial valid NDCG@10 (docs/results/sft.md, SFT tuning): none 0.0877; weight
    # EMA 0.995 + history dropout 0.2: 0.0928; history dropout 0.4 + model dropout 0.2: 0.0942.
    'industrial': {'history_dropout': 0.4, 'dropout': 0.2},
    # Office valid prefers lighter regularisation: NDCG@10 0.1366 (0.2, 0.1) vs 0.1298 (0.4, 0.2).
    'office': {'history_dropout': 0.2, 'dropout': 0.1},
}
_RL_BY_DATASET = {
    # Industrial valid keeps V-STAR + supervised anchor only with the exact-match `rule` reward,
    # selected on the whole valid split (docs/results/rl.md, "Industrial: the reward"; seed 0,
    # best valid NDCG@10, start 0.0830): rule 0.0855, ranking 0.0854, ranking+prefix 0.0830.
    'industrial': {'reward': 'rule', 'valid_max_rows': 0},
    # Office valid keeps V-STAR + supervised anchor at lr 1e-4 over 4 epochs with the dense
    # ranking+prefix reward (docs/results/rl.md, "Office"; 3 RL seeds): valid NDCG@10 0.1240 ->
    # 0.1276, kept on every seed, while the anchor alone and the paper's loss keep the start.
    'office': {'reward': 'ranking+prefix', 'valid_max_rows': 1000},
}


def sft_regularisers(c: ml_collections.ConfigDict, dataset: str = 'industrial') -> None:
  """The SFT regularisers chosen for the small rebuilt (~29%) Amazon train subsets, in place:
  a weight EMA, history dropout and model dropout (their valid measurements above)."""
  chosen = _SFT_BY_DATASET[dataset]
  c.sft.ema_decay = 0.995
  c.sft.history_dropout = chosen['history_dropout']
  c.model.dropout = chosen['dropout']


def rl_recipe(c: ml_collections.ConfigDict, dataset: str = 'industrial') -> None:
  """The RL recipe chosen on the Amazon valid splits, in place: the holdout protocol (every
  user's last train row leaves SFT and is RL's rollout rows; docs/method.md, "RL holdout"),
  V-STAR + supervised anchor (w_sft = 1; docs/method.md, "Supervised anchor"), lr 1e-4, 4
  epochs validated once per epoch (41 iterations of 64 users on Industrial)."""
  chosen = _RL_BY_DATASET[dataset]
  c.data.holdout = 1.0
  c.rl.train_splits = ('holdout',)
  c.rl.w_sft = 1.0
  c.rl.lr = 1e-4
  c.rl.steps, c.rl.epochs = 0, 4
  c.rl.valid_every = 41
  c.rl.reward = chosen['reward']
  c.rl.valid_max_rows = chosen['valid_max_rows']


def hf_recipe(c: ml_collections.ConfigDict) -> None:
  """The paper's setting, in place: a pretrained causal LM (model.backbone='hf'; set
  --config.model.hf_path) fine-tuned as MiniOneRec's SFT does it (lr 3e-4, 20 warmup steps, no
  weight decay, Adam's usual b2, 10 epochs; docs/hf_backbone.md), with none of the
  SID-decoder regularisers (history dropout masks decoder history items; a weight EMA would
  double the LM's memory). RL keeps the dataset's recipe at a tenth of its lr (a pretrained LM
  moves further per step; not tuned here: no LLM weights can be downloaded on this machine)."""
  c.model.backbone = 'hf'
  c.sft.lr, c.sft.warmup_steps, c.sft.weight_decay, c.sft.b2 = 3e-4, 20, 0.0, 0.999
  c.sft.epochs = 10
  c.sft.ema_decay = 0.0
  c.sft.history_dropout = 0.0
  c.rl.anchor_history_dropout = 0.0
  c.rl.lr = c.rl.lr / 10


class ConfigError(ValueError):
  """An impossible setting; the message starts with the flag that sets it."""

  def __init__(self, flag: str, message: str):
    super().__init__(f'--config.{flag}: {message}')
    self.flag = flag
