"""How many torch threads interactive use (the explorer, the workshop) runs on.

Torch takes one thread per core. On a laptop that is also running a browser and a video call
that is the worst choice: every parallel region waits for its slowest thread, and one of them
is always queued behind someone else's work. Measured on 2 cores with one competing busy
process (issue 30): 2 threads took 9.6-65 s per new explorer cell, 1 thread 0.88-1.00 s; on the
quiet machine 2 threads took 0.54-0.61 s and 1 thread 0.90-1.06 s. Leaving one core free costs a
little when the machine is idle and saves the session when it is not, so that is the policy:

    threads = max(1, usable cores - 1)          # 1 on 2 cores, 3 on 4, 7 on 8

``EMERDIFF_THREADS=N`` overrides it (e.g. ``EMERDIFF_THREADS=2 jupyter lab``); without it an
explicit ``OMP_NUM_THREADS`` is honoured (``make figures`` runs its kernels with one). Only the
intra-op count is set: ``torch.set_num_threads`` takes effect at once inside a running kernel,
whereas ``OMP_WAIT_POLICY`` set after torch is loaded does nothing, and the inter-op pool is
left alone. The count is per thread: a worker thread calls :func:`apply_interactive_threads`
itself (it does not follow later changes made on the main thread).
"""

from __future__ import annotations

import os

ENV_VAR = "EMERDIFF_THREADS"
_announced = False


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def interactive_threads(environ=None) -> int:
    """The thread count of the policy: ``EMERDIFF_THREADS`` when set, else ``OMP_NUM_THREADS``
    when set, else one core left free.

    Raises:
        ValueError: ``EMERDIFF_THREADS`` is set but not a positive whole number.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_VAR} must be a positive whole number, got {value!r}")
        return int(value)
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    return max(1, usable_cores() - 1)


def apply_interactive_threads(announce: bool = True) -> int:
    """Sets this thread's torch intra-op thread count to :func:`interactive_threads` and, the
    first time in a process when ``announce``, prints what it chose and how to change it.

    Returns:
        the thread count set.
    """
    import torch

    global _announced
    threads = interactive_threads()
    torch.set_num_threads(threads)
    if announce and not _announced:
        _announced = True
        source = next((f"{name}={os.environ[name].strip()}" for name in (ENV_VAR, "OMP_NUM_THREADS")
                       if os.environ.get(name, "").strip()),
                      f"{usable_cores()} usable cores, one left free")
        print(f"torch uses {threads} thread(s) ({source}; set {ENV_VAR} to change it)")
    return threads
