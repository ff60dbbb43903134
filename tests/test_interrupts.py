"""A Ctrl-C that Python swallows (raised while a finalizer runs) is not lost while gnorm run coordinates
a study (gnorm.interrupts)."""

import os
import signal
import threading

import pytest

from gnorm.interrupts import noting_interrupts, raise_if_interrupted

#: The finalizer's dropped KeyboardInterrupt is what these tests make happen.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class InterruptedWhileFinalized:
    """Sends this process SIGINT from its finalizer and lets the handler run there: Python prints the
    handler's KeyboardInterrupt as "Exception ignored" and drops it."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs between these bytecodes
            pass


@pytest.fixture
def main_thread_with_default_sigint():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can be installed from the main thread only")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this test process")


def test_python_drops_a_keyboard_interrupt_raised_in_a_finalizer(main_thread_with_default_sigint):
    InterruptedWhileFinalized()  # nothing raised here: the premise of gnorm.interrupts


def test_a_swallowed_interrupt_is_raised_at_the_next_check(main_thread_with_default_sigint):
    with noting_interrupts():
        InterruptedWhileFinalized()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    raise_if_interrupted()  # outside the block nothing is noted


def test_without_an_interrupt_the_check_does_nothing(main_thread_with_default_sigint):
    with noting_interrupts():
        raise_if_interrupted()


def test_an_ignored_sigint_is_left_ignored(main_thread_with_default_sigint):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with noting_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            raise_if_interrupted()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
