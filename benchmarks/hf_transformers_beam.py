r"""transformers' constrained beam search with MiniOneRec's evaluate.py settings (the reference side).

Run with a Python that has torch and transformers (not a vstar_jax dependency):
tests/fixtures/make_hf_fixtures.py takes its reference rankings from `constrained_beam`, and
benchmarks/hf_decode.py times it beside vstar_jax's beam search on the same checkpoint:

  /path/to/torch/python benchmarks/hf_transformers_beam.py --checkpoint=DIR --inputs=F.json
prints one JSON object on its last line (users/s, and each prompt's ranked SIDs).
"""

import argparse
import json
import resource
import time

import torch
import transformers


class SidConstraint(transformers.LogitsProcessor):
  """MiniOneRec's ConstrainedLogitsProcessor (docs/hf_backbone.md) in other words: after
  log_softmax, every token the SID trie does not allow after the tokens generated so far gets
  -1e6 added (a finite mask, no renormalisation; a row with nothing allowed is penalised
  everywhere)."""

  def __init__(self, allowed, prompt_len):
    self.allowed, self.prompt_len = allowed, prompt_len

  def __call__(self, input_ids, scores):
    scores = torch.log_softmax(scores, dim=-1)
    mask = torch.full_like(scores, -1e6)
    for row in range(input_ids.shape[0]):
      allowed = self.allowed.get(tuple(input_ids[row, self.prompt_len:].tolist()), [])
      if allowed:
        mask[row, allowed] = 0
    return scores + mask


def sid_trie(tokenizer, sids):
  """Generated-token prefix -> allowed next tokens, from '### Response:\\n' + SID + '\\n' + EOS
  (evaluate.py's trie text), keyed on the generated part only."""
  prefix = len(tokenizer('### Response:\n').input_ids)
  allowed = {}
  for sid in sids:
    ids = tokenizer('### Response:\n' + sid + '\n').input_ids[prefix:] + [tokenizer.eos_token_id]
    for i in range(len(ids)):
      allowed.setdefault(tuple(ids[:i]), set()).add(ids[i])
  return {k: sorted(v) for k, v in allowed.items()}


def constrained_beam(model, tokenizer, prompts, sids, num_beams=50, batch_size=8):
  """transformers' generate with MiniOneRec's evaluate.py settings -> per prompt, ranked SIDs, scores."""
  allowed = sid_trie(tokenizer, sids)
  eos = tokenizer.eos_token_id
  results = []
  for start in range(0, len(prompts), batch_size):
    batch = prompts[start:start + batch_size]
    length = max(len(p) for p in batch)
    ids = torch.tensor([[eos] * (length - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in batch])
    config = transformers.GenerationConfig(
        num_beams=num_beams, num_return_sequences=num_beams, length_penalty=0.0, do_sample=False,
        early_stopping=False, max_new_tokens=16, pad_token_id=eos, eos_token_id=eos)
    with torch.no_grad():
      out = model.generate(ids, attention_mask=mask, generation_config=config,
                           use_model_defaults=False, return_dict_in_generate=True,
                           output_scores=True,
                           logits_processor=transformers.LogitsProcessorList(
                               [SidConstraint(allowed, length)]))
    texts = tokenizer.batch_decode(out.sequences[:, length:], skip_special_tokens=True)
    texts = [t.split('Response:\n')[-1].strip() for t in texts]
    scores = out.sequences_scores.float().tolist()
    for row in range(len(batch)):
      picked = slice(row * num_beams, (row + 1) * num_beams)
      results.append({'predict': texts[picked], 'scores': scores[picked]})
  return results


def peak_rss_mib() -> float:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited over exec)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True, help='a Hugging Face folder')
  parser.add_argument('--inputs', required=True,
                      help='JSON {"prompts": [[ids]], "sids": [catalogue SID strings]}')
  parser.add_argument('--num_beams', type=int, default=50)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--threads', type=int, default=0, help='torch threads (0: its default)')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  inputs = json.loads(open(args.inputs).read())
  model = transformers.AutoModelForCausalLM.from_pretrained(
      args.checkpoint, torch_dtype=getattr(torch, args.dtype)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.checkpoint)
  warm = inputs['prompts'][:args.batch_size]
  constrained_beam(model, tokenizer, warm, inputs['sids'], args.num_beams, args.batch_size)
  start = time.perf_counter()
  results = constrained_beam(model, tokenizer, inputs['prompts'], inputs['sids'], args.num_beams,
                             args.batch_size)
  wall = time.perf_counter() - start
  print(json.dumps({'users': len(results), 'wall_s': wall, 'users_per_s': len(results) / wall,
                    'peak_rss_mib': peak_rss_mib(),
                    'torch': torch.__version__, 'transformers': transformers.__version__,
                    'threads': torch.get_num_threads(), 'dtype': args.dtype,
                    'predict': [r['predict'] for r in results],
                    'scores': [r['scores'] for r in results]}))


if __name__ == '__main__':
  main()
