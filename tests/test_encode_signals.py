"""SIGTERM while OpenJPEG encodes: unwound as medlossy's Terminated (exit 143), not a crash.

OpenJPEG writes its codestream through Python callbacks; a signal handler's exception raised
there crashed the process (exit 139 in 4 of 5 SIGTERMs during `reader make --workers 1`)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

ENCODE_LOOP = """
import signal, sys
import numpy as np
from medlossy.cli.entry import EXIT_TERMINATED, Terminated, exit_on_sigterm
from medlossy.codecs.jpeg2k import _encode
signal.signal(signal.SIGTERM, exit_on_sigterm)
image = (np.random.default_rng(0).normal(0, 300, (512, 512))).astype(np.int16)
print("encoding", flush=True)
try:
    while True:
        _encode(image, compression_ratios=[20])
except Terminated:
    sys.exit(EXIT_TERMINATED)
"""


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.1])
def test_sigterm_during_an_encode_unwinds_instead_of_crashing(delay: float) -> None:
    process = subprocess.Popen([sys.executable, "-c", ENCODE_LOOP], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "encoding"
    time.sleep(delay)  # most of the loop's time is inside OpenJPEG
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)

    assert process.returncode == 128 + signal.SIGTERM, err[-500:]
