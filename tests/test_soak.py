"""The soak's short version (benchmarks/soak.py; the 1,000-generation figures are in
docs/benchmarks.md, Soak): 60 generations of a small simulated session as real
processes, and the server's memory, open files and time per generation stay flat.

The bounds, per 100 generations of the least-squares slope over the 50 generations
after the warm-up, and why noise cannot cross them while a leak does:
- open files: < 10.  The count is an integer that moves only when a file or socket
  is opened and not closed; a few transient ones (a PNG being written) give an sd
  of at most ~2, whose slope's standard error over 50 points is 2 * sqrt(12/50^3)
  * 100 = 2.0.  One fd leaked every 10 generations reaches the bound.
- memory: < 50 MB.  RSS moves in allocator steps; one step of J MB half-way gives a
  slope of about 3 J per 100: steps of 15 MB (far above the ~0.1 MB sd measured)
  stay below.  Keeping each closed block's images (the leak this soak found) costs
  8 MB per 100 generations at this size and 900 MB per 100 at 256 px x 48 images;
  the bound catches anything from ~0.5 MB a generation.
- time: < 2 median generations.  The per-generation time's sd under the shared CPUs'
  load is ~0.05 s (0.2 s median), a standard error of ~0.05 s per 100; the bound
  is ~8 standard errors, and doubling generation time over 50 generations crosses it.
"""

import sys

import numpy as np
import pytest

from benchmarks.soak import run_soak

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_sixty_generations_leave_memory_files_and_time_flat(tmp_path):
    soak = run_soak(60, tmp_path / "soak", timeout_s=240)
    report = soak.report()
    assert report["measured"] == 60, report
    assert abs(report["fds"]["slope_per_100"]) < 10, report
    assert report["rss_mb"]["slope_per_100"] < 50, report
    median = float(np.median(soak.seconds[10:]))
    assert report["seconds"]["slope_per_100"] < 2 * median, report
