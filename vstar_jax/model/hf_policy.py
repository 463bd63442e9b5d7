"""A Hugging Face causal LM with SID tokens as the searches' and RL loss's policy (paper Sec. 4).

The same functions as model.policy for the SID decoder (beam_policy, ved_policy,
candidate_log_probs; same signatures and outputs), so decode.beam, decode.ved and rl.loss run
unchanged on this backbone. `history` is MiniOneRec's prompt as token ids [B, P] (left padded
with -1; sid_tokens.eval_prompt). Layout: the prompt minus its last token is prefilled once
per user into a KV cache shared by every beam and tree node; the prompt's last token (the
final piece of "### Response:\\n") plays the SID decoder's SEP at suffix index 0, so the
hidden state at suffix index d gives the level-d distribution:

  suffix index   0      1     2     3     4 ..
  token          SEP    t_a   t_b   t_c   tail[:-1]
  predicts       a      b     c     tail[0] ..

Level-d log-probs are MiniOneRec's: the full-vocabulary log-softmax gathered at the level's
SID tokens (no renormalisation over the allowed codes; -inf where a code has no token). Its
ranking adds the tail (the "\\n" piece and EOS) after the L codes (rank_with_tail). V and Q
are read from the final hidden state by model.value_head's heads (params 'value_head',
'q_head'), as for the SID decoder.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vstar_jax.data import sid_strings
from vstar_jax.model import attention
from vstar_jax.model import causal_lm
from vstar_jax.model import expansion as expansion_lib
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import policy
from vstar_jax.model import sid_tokens
from vstar_jax.model import value_head


@dataclasses.dataclass(frozen=True)
class HfPolicyConfig:
  """Static config of the HF backbone as a SID policy (hashable: a static argument of jit).

  Attributes:
    lm: the backbone's LmConfig.
    sid_token_ids: [L][K] token id of code k at level l, -1 where the tokenizer has none.
    tail_token_ids: the tokens MiniOneRec requires after every SID ("\\n" piece(s), then EOS).
    source: the checkpoint folder the backbone came from ('' when unknown): its tokenizer,
      with the SID tokens of sid_token_ids added, encodes the prompts (model.backbone).
  """
  lm: causal_lm.LmConfig
  sid_token_ids: tuple
  tail_token_ids: tuple
  source: str = ''

  @property
  def num_levels(self) -> int:
    return len(self.sid_token_ids)

  @property
  def num_codes(self) -> int:
    return len(self.sid_token_ids[0])

  @property
  def dtype(self) -> str:
    return self.lm.dtype

  def table(self) -> jnp.ndarray:
    """[L, K] int32 code -> token id (-1 where none)."""
    return jnp.asarray(self.sid_token_ids, jnp.int32)


@flax.struct.dataclass
class Prompt:
  """The users' prefilled prompts.

  Attributes:
    cache: KV cache of every prompt token but the last.
    sep: [B] int32, each prompt's last token, fed at suffix index 0.
  """
  cache: causal_lm.PromptCache
  sep: jnp.ndarray


def policy_config(lm: causal_lm.LmConfig, tok: sid_tokens.SidTokenizer, item_codes: np.ndarray,
                  num_codes: int, source: str = '') -> HfPolicyConfig:
  """HfPolicyConfig of a backbone whose tokenizer holds the SID tokens of item_codes [I, L]."""
  item_codes = np.asarray(item_codes)
  table = sid_tokens.sid_token_table(tok, item_codes.shape[1], num_codes)
  sids = sid_strings.format_sids(np.unique(item_codes, axis=0))
  tail = sid_tokens.tail_tokens(tok, sids, table)
  if table.max() >= lm.vocab_size or max(tail) >= lm.vocab_size:
    raise ValueError(f'SID tokens reach id {max(table.max(), max(tail))}, beyond the model\'s '
                     f'{lm.vocab_size} rows (extend the model with sid_tokens.extend_model)')
  return HfPolicyConfig(lm=lm, sid_token_ids=tuple(tuple(int(t) for t in row) for row in table),
                        tail_token_ids=tuple(int(t) for t in tail), source=str(source))


def _heads(cfg: HfPolicyConfig):
  dtype = jnp.dtype(cfg.dtype)
  return (value_head.ValueHead(cfg.lm.hidden_size, dtype),
          value_head.QHead(cfg.num_levels, cfg.num_codes, cfg.lm.hidden_size, dtype))


@functools.partial(jax.jit, static_argnums=0)
def init_heads(cfg: HfPolicyConfig, rng: jax.Array) -> dict:
  """Fresh V and Q head params {'value_head': .., 'q_head': ..} on the backbone's hidden width."""
  v_head, q_head = _heads(cfg)
  hidden = jnp.zeros((1, cfg.lm.hidden_size), jnp.dtype(cfg.dtype))
  v_rng, q_rng = jax.random.split(rng)
  return {'value_head': v_head.init(v_rng, hidden)['params'],
          'q_head': q_head.init(q_rng, hidden, 0)['params']}


def load(path, item_codes: np.ndarray, num_codes: int, rng: jax.Array, dtype: str = 'float32'):
  """A checkpoint folder as a SID policy -> (params, HfPolicyConfig, SidTokenizer).

  The catalogue's SID tokens (item_codes [I, L]) are added where the tokenizer lacks them
  (sid_tokens.extend_model); the value heads are freshly initialised from rng.
  """
  lm, params = hf_checkpoint.load(path, dtype)
  tok = sid_tokens.load_tokenizer(path)
  params, lm, tok = sid_tokens.extend_model(params, lm, tok, item_codes)
  cfg = policy_config(lm, tok, item_codes, num_codes, source=str(path))
  return {**params, **init_heads(cfg, rng)}, cfg, tok


def level_log_probs(params, cfg: HfPolicyConfig, hidden, level):
  """hidden [..., D] -> log-probs [..., K] of the level's codes (full-vocabulary log-softmax at
  their tokens, -inf where a code has no token). level: static int, or int array [...]."""
  logits = causal_lm.logits(params, cfg.lm, hidden)                          # [..., V]
  ids = cfg.table()[level]                                                    # [K] or [..., K]
  gathered = jnp.take_along_axis(logits, jnp.broadcast_to(jnp.maximum(ids, 0),
                                                          logits.shape[:-1] + ids.shape[-1:]),
                                 axis=-1)
  log_probs = gathered - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  return jnp.where(ids >= 0, log_probs, -jnp.inf)


def _outputs(params, cfg: HfPolicyConfig, hidden, level):
  """hidden [..., D] -> level log-probs [..., K], V [...], Q [..., K]."""
  v_head, q_head = _heads(cfg)
  return (level_log_probs(params, cfg, hidden, level),
          v_head.apply({'params': params['value_head']}, hidden),
          q_head.apply({'params': params['q_head']}, hidden, level))


def prefill(params, cfg: HfPolicyConfig, history) -> Prompt:
  """Prompt for history [B, P] (-1 left padding; every row ends with a real token)."""
  return Prompt(cache=causal_lm.prefill(params, cfg.lm, history[:, :-1]), sep=history[:, -1])


def _empty(cfg: HfPolicyConfig, batch: int, width: int, length: int = 0) -> attention.SuffixCache:
  k, v = causal_lm.empty_suffix(cfg.lm, batch, width, length)
  return attention.SuffixCache(k=k, v=v)


def _response_tokens(cfg: HfPolicyConfig, sep, codes):
  """sep [B], codes [B, W, L'] -> suffix tokens [B, W, 1 + L'] = [SEP, t_0 .. t_{L'-1}]."""
  tokens = cfg.table()[jnp.arange(codes.shape[-1]), jnp.maximum(codes, 0)]
  sep = jnp.broadcast_to(sep[:, None, None], codes.shape[:2] + (1,))
  return jnp.concatenate([sep, tokens], axis=-1)


def beam_policy(params, cfg: HfPolicyConfig, history):
  """(initial state, step_fn) of decode.beam.beam_search for users' prompts history [B, P].

  As model.policy.beam_policy: the prompt is prefilled once per user; the state is the beams'
  suffix cache; step_fn(cache, parent [B, W], code [B, W], level) makes beam w a copy of beam
  parent[b, w] (level > 0), feeds its level-1 code's token (SEP at level 0) and returns the
  level-`level` log-probs [B, W, K] and the grown cache.
  """
  return beam_policy_from(params, cfg, prefill(params, cfg, history))


def beam_policy_from(params, cfg: HfPolicyConfig, prompt: Prompt):
  """beam_policy on an already prefilled Prompt."""
  table = cfg.table()

  def step(cache, parent, code, level):
    if level > 0:
      cache = attention.reorder_suffix_cache(cache, parent)
      token = table[level - 1][jnp.maximum(code, 0)]
    else:
      token = jnp.broadcast_to(prompt.sep[:, None], code.shape)
    hidden, k, v = causal_lm.extend(params, cfg.lm, prompt.cache, cache.k, cache.v,
                                    token[..., None])
    return (level_log_probs(params, cfg, hidden[:, :, 0], level),
            attention.SuffixCache(k=k, v=v))

  return _empty(cfg, prompt.sep.shape[0], 1), step


def tail_log_probs(params, cfg: HfPolicyConfig, prompt: Prompt, codes):
  """log p(tail tokens | prompt, SID) [B, W] of whole SIDs codes [B, W, L] (MiniOneRec's "\\n" and
  EOS steps), teacher-forced on the shared prompt cache."""
  tail = jnp.asarray(cfg.tail_token_ids, jnp.int32)
  num_tail = tail.shape[0]
  tokens = jnp.concatenate(
      [_response_tokens(cfg, prompt.sep, codes),
       jnp.broadcast_to(tail[:-1], codes.shape[:2] + (num_tail - 1,))], axis=-1)
  empty = _empty(cfg, *codes.shape[:2])
  hidden, _, _ = causal_lm.extend(params, cfg.lm, prompt.cache, empty.k, empty.v, tokens)
  logits = causal_lm.logits(params, cfg.lm, hidden[:, :, cfg.num_levels:])  # [B, W, n, V]
  taken = jnp.take_along_axis(logits, jnp.broadcast_to(tail[:, None], logits.shape[:-1] + (1,)),
                              axis=-1)[..., 0]
  return jnp.sum(taken - jax.nn.logsumexp(logits, axis=-1), axis=-1)


def rank_with_tail(params, cfg: HfPolicyConfig, prompt: Prompt, codes, scores):
  """MiniOneRec's final ranking of beam-search output: scores [B, W] (sum of the L code log-probs,
  -inf in the tail) + the tail's log-prob, re-sorted descending -> (codes [B, W, L], scores [B, W]).

  With decode.beam's top-W SIDs by the L-level score this is exactly transformers' constrained
  generate (num_beams = W, length_penalty 0): its beams keep the top-W prefixes at each SID
  level, then take the only allowed "\\n" and EOS, and sort by the sum of all L + tail steps.
  """
  total = jnp.where(scores > -jnp.inf, scores + tail_log_probs(params, cfg, prompt, codes),
                    -jnp.inf)
  total, order = jax.lax.top_k(total, total.shape[1])
  return jnp.take_along_axis(codes, order[..., None], axis=1), total


def ved_policy(params, cfg: HfPolicyConfig, history):
  """(root_fn, expand_fn) of decode.ved.ved for users' prompts history [B, P].

  As model.policy.ved_policy, both return a model.expansion.Expansion: a tree node's embedding
  is the keys and values of its own last token, k and v [B, M, layers, Hkv, Dh] (SEP for the
  root, else its code's token); expanding a child gathers its parent's path into a suffix
  cache and feeds ONE token on top of it.
  """
  prompt = prefill(params, cfg, history)
  batch, num_levels = history.shape[0], cfg.num_levels
  table = cfg.table()

  def expansion(hidden, k, v, level) -> expansion_lib.Expansion:
    log_probs, value, q = _outputs(params, cfg, hidden, level)
    return expansion_lib.Expansion(log_probs=log_probs, value=value, child_values=q,
                                   embedding=(jnp.moveaxis(k, 0, 2), jnp.moveaxis(v, 0, 2)))

  def root_fn():
    empty = _empty(cfg, batch, 1, num_levels)
    zero = jnp.zeros((batch, 1), jnp.int32)
    return expansion(*causal_lm.node(params, cfg.lm, prompt.cache, empty.k, empty.v, zero,
                                     prompt.sep[:, None]), 0)

  def expand_fn(path_states, code, parent_depth):
    k, v = (jnp.moveaxis(x, 3, 0) for x in path_states)                  # [layers, B, M, L, ...]
    tokens = table[parent_depth, jnp.maximum(code, 0)]
    position = parent_depth + 1
    return expansion(*causal_lm.node(params, cfg.lm, prompt.cache, k, v, position, tokens),
                     jnp.minimum(position, num_levels - 1))

  return root_fn, expand_fn


def candidate_log_probs(params, candidates: policy.Candidates, *, cfg: HfPolicyConfig):
  """Log-probs, V and Q along each user's G candidates (the policy fn of rl.loss.rl_loss).

  The prompt is prefilled once per user and shared by its G candidates, whose suffixes
  [SEP, t_0 .. t_{L-1}] run in one pass.

  Args:
    params: backbone and head params.
    candidates: history [B, P] prompt tokens, cand [B, G, L] (-1 rows where invalid), valid
      [B, G].
    cfg: the HfPolicyConfig.

  Returns:
    token log-probs [B, G, L] (full-vocabulary, as MiniOneRec's RL loss reads them), values
    [B, G, L+1] (V of each candidate's prefixes of length 0..L) and q [B, G, L] (Q(y_<l, y_l));
    0 for invalid candidates.
  """
  codes, valid = jnp.maximum(candidates.cand, 0), candidates.valid
  prompt = prefill(params, cfg, candidates.history)
  empty = _empty(cfg, *codes.shape[:2])
  hidden, _, _ = causal_lm.extend(params, cfg.lm, prompt.cache, empty.k, empty.v,
                                  _response_tokens(cfg, prompt.sep, codes))  # [B, G, L+1, D]
  num_levels = cfg.num_levels
  levels = jnp.broadcast_to(jnp.arange(num_levels), codes.shape)
  log_probs, _, q = _outputs(params, cfg, hidden[:, :, :num_levels], levels)  # [B, G, L, K]
  v_head, _ = _heads(cfg)
  values = v_head.apply({'params': params['value_head']}, hidden)
  taken = codes[..., None]
  keep = valid[..., None]
  return (jnp.where(keep, jnp.take_along_axis(log_probs, taken, axis=-1)[..., 0], 0.0),
          jnp.where(keep, values, 0.0),
          jnp.where(keep, jnp.take_along_axis(q, taken, axis=-1)[..., 0], 0.0))


def sft_loss(params, cfg: HfPolicyConfig, history, target, rng=None, label_smoothing: float = 0.0):
  """MiniOneRec's SFT loss: mean NLL of the response tokens given the prompt, over the batch's
  response tokens (Hugging Face Trainer's token mean; next_sid rows: [t_0 .. t_{L-1}, tail]).

  Args:
    params: backbone params (head params, if any, are not used).
    cfg: the HfPolicyConfig.
    history: [B, P] int32 training prompts (backbone.training_rows), -1 left padding.
    target: [B, R] int32 response token ids, -1 right padding (model.sft_tasks).
    rng: unused (Qwen2 / Llama have no dropout); the argument order of model.decoder.sft_loss.
    label_smoothing: epsilon of full-vocabulary label smoothing (MiniOneRec: 0).

  Returns:
    loss [] and metrics {'loss', 'nll' (response tokens), 'nll_sid' and 'acc_L1'.. (over the
    rows whose response is a SID: its L SID tokens; accuracy = argmax over the level's codes
    == the code)}.
  """
  del rng
  num_levels = cfg.num_levels
  table = cfg.table()                                                            # [L, K]
  tokens = jnp.concatenate([history, target[:, :-1]], axis=1)
  hidden = causal_lm.forward(params, cfg.lm, tokens, tokens >= 0)[:, -target.shape[1]:]
  log_probs = jax.nn.log_softmax(causal_lm.logits(params, cfg.lm, hidden), axis=-1)  # [B, R, V]
  nll = -jnp.take_along_axis(log_probs, jnp.maximum(target, 0)[..., None], axis=-1)[..., 0]
  weight = (target >= 0).astype(jnp.float32)                                     # [B, R]
  count = jnp.maximum(weight.sum(), 1.0)
  nll_mean = jnp.sum(nll * weight) / count
  loss = (1.0 - label_smoothing) * nll_mean + label_smoothing * jnp.sum(
      -log_probs.mean(-1) * weight) / count
  is_code = target[:, :num_levels, None] == table[None]                         # [B, L, K]
  sid_row = jnp.all(jnp.any(is_code, axis=-1), axis=-1).astype(jnp.float32)      # [B]
  code = jnp.argmax(is_code, axis=-1)                                            # [B, L]
  level_scores = jnp.take_along_axis(
      log_probs[:, :num_levels], jnp.broadcast_to(jnp.maximum(table, 0), (len(target),) + table.shape),
      axis=-1)
  level_scores = jnp.where(table >= 0, level_scores, -jnp.inf)                   # [B, L, K]
  sid_rows = jnp.maximum(sid_row.sum(), 1.0)
  correct = jnp.sum((jnp.argmax(level_scores, axis=-1) == code) * sid_row[:, None], 0) / sid_rows
  metrics = {'loss': loss, 'nll': nll_mean,
             'nll_sid': jnp.sum(nll[:, :num_levels] * sid_row[:, None]) / (sid_rows * num_levels)}
  metrics.update({f'acc_L{l + 1}': correct[l] for l in range(num_levels)})
  return loss, metrics
