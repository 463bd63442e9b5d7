"""Tests for vstar_jax.interrupts: a first Ctrl-C inside deferred() is raised when the block
ends, a second at once, and outside a block at once."""

import os
import signal
import time

import pytest

from vstar_jax import interrupts


@pytest.fixture
def installed():
  previous = signal.getsignal(signal.SIGINT)
  interrupts.install()
  yield
  signal.signal(signal.SIGINT, previous)


def ctrl_c():
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.05)  # the handler runs at the next bytecode boundary


def test_first_ctrl_c_in_a_block_is_raised_when_the_block_ends(installed):
  finished = []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.deferred():
      ctrl_c()
      with interrupts.deferred():   # nested: raised only when the outer block ends
        pass
      finished.append(True)
  assert finished == [True]
  with interrupts.deferred():       # the pending Ctrl-C was consumed
    pass


def test_second_ctrl_c_and_ctrl_c_outside_a_block_raise_at_once(installed):
  reached = []
  with pytest.raises(KeyboardInterrupt):
    with interrupts.deferred():
      ctrl_c()
      ctrl_c()
      reached.append(True)
  assert not reached
  with pytest.raises(KeyboardInterrupt):
    ctrl_c()


def test_uninterrupted_method_finishes_before_the_interrupt(installed):
  done = []

  @interrupts.uninterrupted
  def save():
    ctrl_c()
    done.append(True)
    return 1

  with pytest.raises(KeyboardInterrupt):
    save()
  assert done == [True]
