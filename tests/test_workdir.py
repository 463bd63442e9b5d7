"""The workdir: the training config survives every other command, one writer at a time, read-only use."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_SYNTHETIC, run_main
from vstar_jax import default_config
from vstar_jax import workdir


def _copy(trained, tmp_path, name='w'):
  return pathlib.Path(shutil.copytree(trained, tmp_path / name))


def _records(root):
  return [json.loads(p.read_text()) for p in sorted((root / 'runs').glob('*.json'))]


def _metrics(root, stage='sft'):
  return json.loads((root / 'eval' / f'{stage}_test' / 'metrics.json').read_text())


def test_recorded_config_restores_onto_todays_defaults(tmp_path):
  config = default_config.base_config()
  config.model.d_model, config.sft.train_splits, config.seed = 64, ('train', 'valid'), 3
  workdir.record_training(tmp_path, config)
  stored = json.loads((tmp_path / 'config.json').read_text())
  del stored['eval']['ved_multiplier']  # a knob added after the run was recorded
  stored['data']['name'] = 'Tools'      # a key only its config file defines (configs/prepared.py)
  (tmp_path / 'config.json').write_text(json.dumps(stored))
  back = workdir.training_config(tmp_path)
  assert back.model.d_model == 64 and back.seed == 3
  assert back.sft.train_splits == ('train', 'valid')
  assert back.eval.ved_multiplier == default_config.base_config().eval.ved_multiplier
  assert back.data.name == 'Tools'
  assert workdir.training_config(tmp_path / 'nothing') is None


def test_resolve_takes_the_model_from_the_record_and_the_rest_from_the_command(tmp_path):
  trained = default_config.base_config()
  trained.model.d_model, trained.seed, trained.data_dir = 64, 3, '/data/at/training'
  trained.rl.lr, trained.ved.selection = 3e-5, 'ucb'
  workdir.record_training(tmp_path, trained)
  command = default_config.base_config()
  command.mode, command.eval.num_beams, command.distributed.enabled = 'eval', 20, True
  command.ved.selection = 'best_first'       # a decoding choice: the command's
  resolved = workdir.resolve_config(command, tmp_path)
  assert (resolved.model.d_model, resolved.seed, resolved.data_dir) == (64, 3, '/data/at/training')
  assert (resolved.mode, resolved.eval.num_beams, resolved.distributed.enabled) == ('eval', 20, True)
  assert (resolved.rl.lr, resolved.ved.selection) == (3e-5, 'best_first')
  assert command.model.d_model == 128  # the command's config is not modified
  command.data_dir = '/data/moved'
  assert workdir.resolve_config(command, tmp_path).data_dir == '/data/moved'


def test_records_from_before_a_knob_moved_still_resolve(tmp_path):
  old = default_config.base_config().to_dict()
  del old['distributed'], old['ved']
  old['rl']['distributed'] = True  # where the launch switch lived before config.distributed
  old['rl']['ved'] = dict(default_config.ved_config().to_dict(), selection='ucb', width=4)
  old['rl']['value_targets'] = 'reward'  # renamed rl.value_target, values renamed too
  old['rl'].pop('value_target', None)
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(old))
  recorded = workdir.training_config(tmp_path)
  assert 'distributed' not in recorded.rl and recorded.distributed.enabled is False
  assert 'ved' not in recorded.rl and (recorded.ved.selection, recorded.ved.width) == ('ucb', 4)
  assert 'value_targets' not in recorded.rl and recorded.rl.value_target == 'rl_reward'


def test_a_stopped_first_training_is_found_in_its_invocation_record(tmp_path):
  config = default_config.base_config()
  config.model.d_model = 48
  for mode in ('sft', 'recommend'):  # the newest *training* invocation counts
    run = workdir.Invocation(tmp_path, mode, ['main'], tmp_path)
    run.set_config(config if mode == 'sft' else default_config.base_config())
    run.finish('interrupted' if mode == 'sft' else 'ok', 130 if mode == 'sft' else 0)
    time.sleep(0.01)
  assert workdir.training_config(tmp_path).model.d_model == 48


def test_output_dir_refuses_files_missing_runs_and_out_for_writers(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(workdir.WorkdirError, match='is a file'):
    workdir.output_dir(tmp_path / 'file', 'sft')
  with pytest.raises(workdir.WorkdirError, match='does not exist'):
    workdir.output_dir(tmp_path / 'none', 'eval')
  with pytest.raises(workdir.WorkdirError, match='--out is for the read-only modes'):
    workdir.output_dir(tmp_path, 'sft', str(tmp_path / 'o'))
  assert workdir.output_dir(tmp_path / 'new', 'sft') == tmp_path / 'new'
  assert workdir.output_dir(tmp_path, 'eval', str(tmp_path / 'o')) == tmp_path / 'o'


def test_lock_refuses_a_second_writer_naming_the_first(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from vstar_jax import workdir; '
       f'lock = workdir.Lock({str(tmp_path)!r}, "the first run"); print("held", flush=True); '
       'sys.stdin.read()'], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir.WorkdirBusy, match=rf'in use by pid {holder.pid} .*the first run'):
      workdir.Lock(tmp_path, 'the second run')
  finally:
    holder.communicate('', timeout=30)
  workdir.Lock(tmp_path, 'after the first ended').release()


def test_training_config_survives_eval_recommend_and_failed_runs(trained_workdir, tmp_path):
  w = _copy(trained_workdir, tmp_path)
  recorded = (w / 'config.json').read_bytes()
  assert json.loads(recorded)['model']['d_model'] == 32 and json.loads(recorded)['mode'] == 'sft'
  trained = _metrics(w)
  # No model flags: eval and recommend restore the 32-wide model from the record.
  run_main('--config=configs/synthetic.py', f'--workdir={w}', '--config.mode=eval',
           '--config.eval.num_beams=10')  # the evaluation settings are the command's
  assert _metrics(w)['HR@10'] == trained['HR@10']
  run_main('--config=configs/synthetic.py', f'--workdir={w}', '--config.mode=recommend',
           '--config.recommend.history=3,5')
  failed = run_main(*TINY_SYNTHETIC, f'--workdir={w}', '--config.mode=sft',
                    '--config.model.d_model=64', check=False)
  assert failed.returncode == 2 and 'do not match this config' in failed.stderr.splitlines()[-1]
  assert (w / 'config.json').read_bytes() == recorded
  runs = _records(w)
  assert [(r['mode'], r['status'], r['exit_code']) for r in runs] == [
      ('sft', 'ok', 0), ('eval', 'ok', 0), ('recommend', 'ok', 0), ('sft', 'user_error', 2)]
  assert runs[1]['config']['model']['d_model'] == 32 and '--config.mode=eval' in runs[1]['argv']
  assert all((w / r['log']).is_file() for r in runs)
  assert 'NDCG@10' in (w / runs[1]['log']).read_text()  # the end-of-run summary table
  for path in [*(w / 'eval' / 'sft_test').iterdir(), *(w / 'runs').iterdir(), w / 'config.json']:
    assert path.stat().st_mode & 0o777 == 0o644, path


def test_second_writer_is_refused_and_ctrl_c_keeps_the_checkpoints(trained_workdir, tmp_path):
  w = _copy(trained_workdir, tmp_path)
  logs_before = set((w / 'logs').iterdir())
  first = subprocess.Popen([sys.executable, '-m', 'vstar_jax.main', *TINY_SYNTHETIC,
                            f'--workdir={w}', '--config.mode=sft', '--config.sft.epochs=500'],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  def first_log():
    return ''.join(p.read_text() for p in set((w / 'logs').iterdir()) - logs_before)

  try:
    deadline = time.time() + 120
    while 'resumed from step' not in first_log():  # the first writer is training
      assert first.poll() is None and time.time() < deadline, 'the first run did not start training'
      time.sleep(0.2)
    second = run_main(*TINY_SYNTHETIC, f'--workdir={w}', '--config.mode=baseline', check=False)
    assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
    assert f'in use by pid {first.pid}' in second.stderr and '--config.mode=sft' in second.stderr
    sent = time.time()
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=60)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 130 and time.time() - sent < 10
  assert 'Traceback' not in err and 'run the same command to resume' in err.strip().splitlines()[-1]
  assert any(p.name.isdigit() for p in (w / 'checkpoints' / 'sft').iterdir())
  assert [r['status'] for r in _records(w)][-1] == 'interrupted'
  assert not (w / 'eval' / 'popularity_test').exists()  # the refused writer wrote nothing


def _read_only(command):
  """`command` run so that file permissions bind (root would ignore them; setpriv drops that)."""
  if os.geteuid() != 0:
    return command
  if not shutil.which('setpriv'):
    pytest.skip('running as root without setpriv: chmod cannot make a directory read-only')
  return ['setpriv', '--bounding-set=-dac_override,-dac_read_search', *command]


def test_recommend_on_a_read_only_workdir(trained_workdir, tmp_path):
  w = _copy(trained_workdir, tmp_path)
  for path in [w, *w.rglob('*')]:
    path.chmod(path.stat().st_mode & ~0o222)
  out = tmp_path / 'out'
  main = [sys.executable, '-m', 'vstar_jax.main', '--config=configs/synthetic.py', f'--workdir={w}']

  def run(*args):
    return subprocess.run(_read_only([*main, *args]), cwd=REPO, capture_output=True, text=True,
                          timeout=600)

  try:
    refused = run('--config.mode=recommend')
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f'error: --workdir={w} is not writable: pass --out=DIR for the recommend outputs']
    writer = run('--config.mode=sft')
    assert writer.returncode == 2 and 'is not writable' in writer.stderr
    assert len(writer.stderr.strip().splitlines()) == 1
    recs = run('--config.mode=recommend', '--config.recommend.history=3,5,7', f'--out={out}')
    assert recs.returncode == 0, recs.stderr[-2000:]
    assert len(json.loads((out / 'recommend.json').read_text())[0]['recommendations']) == 10
    assert [r['mode'] for r in _records(out)] == ['recommend'] and len(_records(w)) == 1
  finally:
    for path in [w, *w.rglob('*')]:
      path.chmod(path.stat().st_mode | 0o200)


def _corrupt(step_dir: pathlib.Path) -> None:
  """Truncates every array file of a checkpoint step (its metadata stays)."""
  for path in (step_dir / 'state').rglob('*'):
    if path.is_file() and 'metadata' not in path.name:
      path.write_bytes(b'')


def test_eval_of_a_corrupt_newest_checkpoint_falls_back_renames_nothing_and_says_which_step(tmp_path):
  w = tmp_path / 'w'
  run_main(*TINY_SYNTHETIC, f'--workdir={w}', '--config.mode=sft', '--config.sft.epochs=2')
  kept = _metrics(w)['checkpoint_step']
  steps = sorted(int(p.name) for p in (w / 'checkpoints' / 'sft').iterdir() if p.name.isdigit())
  assert kept in steps and len(steps) == 2
  _corrupt(w / 'checkpoints' / 'sft' / str(kept))
  listing = sorted(p.name for p in (w / 'checkpoints' / 'sft').iterdir())
  run_main('--config=configs/synthetic.py', f'--workdir={w}', '--config.mode=eval',
           '--config.eval.num_beams=10')
  other, = set(steps) - {kept}
  assert _metrics(w)['checkpoint_step'] == other       # metrics.json says which step was scored
  assert sorted(p.name for p in (w / 'checkpoints' / 'sft').iterdir()) == listing  # read-only
  # The same on a read-only workdir, writing under --out.
  for path in [w, *w.rglob('*')]:
    path.chmod(path.stat().st_mode & ~0o222)
  try:
    proc = subprocess.run(_read_only([sys.executable, '-m', 'vstar_jax.main',
                                      '--config=configs/synthetic.py', f'--workdir={w}',
                                      '--config.mode=eval', '--config.eval.num_beams=10',
                                      f'--out={tmp_path / "out"}']),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _metrics(tmp_path / 'out')['checkpoint_step'] == other
  finally:
    for path in [w, *w.rglob('*')]:
      path.chmod(path.stat().st_mode | 0o200)


def test_a_record_left_running_by_a_dead_process_is_marked_killed(tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  stale = workdir.Invocation(tmp_path, 'sft', ['main'], tmp_path)
  stale.record['pid'] = int(dead.stdout)              # as if that process had been SIGKILLed
  workdir.files.write_json_atomic(stale.record_path, stale.record)
  live = workdir.Invocation(tmp_path, 'eval', ['main'], tmp_path)   # a later run notices it
  records = {r['mode']: r for r in _records(tmp_path)}
  assert records['sft']['status'] == 'killed' and 'without finishing' in records['sft']['error']
  assert records['eval']['status'] == 'running'       # its own, alive: untouched
  live.finish('ok', 0)
  stale.finish('ok', 0)
