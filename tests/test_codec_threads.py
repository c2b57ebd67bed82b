"""Encoders called from several threads of one process (a Dask worker runs one sweep image per
thread): pylibjpeg-openjpeg's encoder segfaulted there, killing every worker of a study run on
a cluster ("KilledWorker ... killed by signal 11")."""

import subprocess
import sys
import textwrap

STRESS = textwrap.dedent("""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from medlossy.codecs import get_codec
    from medlossy.codecs.base import Setting

    codec = get_codec("jpeg2k")
    rng = np.random.default_rng(0)
    images = [rng.normal(1000, 200, (128, 128)).astype(np.int16) for _ in range(8)]

    def streams(start):
        return [codec.encode(images[(start + k) % 8], Setting("ratio", 10.0)) if k % 2 else
                codec.encode_layers(images[(start + k) % 8], [40.0, 50.0, 60.0])
                for k in range(30)]

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(streams, range(16)))
    assert threaded == [streams(start) for start in range(16)]
    print("same streams")
""")


def test_jpeg2k_encodes_from_four_threads_match_serial_encodes() -> None:
    # A separate interpreter: a segfault must fail this test, not end the test run.
    done = subprocess.run([sys.executable, "-c", STRESS], capture_output=True, text=True,
                          timeout=300)

    assert done.returncode == 0, done.stderr[-2000:]
    assert "same streams" in done.stdout
