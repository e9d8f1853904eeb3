"""How many torch intra-op threads each environment worker runs: the one thread policy.

Esper sets torch's intra-op thread count itself instead of keeping torch's default (one thread
per core). Host training is many small operations; on a machine shared with other work a second
thread mostly waits for a descheduled partner: a ``fashion_mnist_impaired`` epoch of 100 batches
took 29-39 s with torch's default of 2 threads on 2 cores and 5.0-5.6 s with one (issue #11).
So each environment worker runs one thread unless told otherwise, and the workers together never
run more threads than the cores this process may use. The count also changes results (a
reduction's rounding, from the first epoch on), so runs record it and a resume must use the same.

Every command (``esper.cli``) and every worker process (the Ray workers, a study runner) asks
``threads_per_worker``; an in-process run is one worker. This module imports no torch.
"""

from __future__ import annotations

import os

DEFAULT_THREADS_PER_WORKER = 1
"""One intra-op thread per environment worker: measured 6x faster per epoch than torch's default
on a shared 2-core machine; more cores are used by more workers, not by more threads each."""


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, which a container, a scheduler or
    ``taskset`` may make smaller than the machine's core count (Linux, Esper's platform)."""
    return len(os.sched_getaffinity(0))


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class TooFewCores(ValueError):
    """``workers × threads`` exceeds the cores (the message says which flag to change).

    Attributes:
        workers, threads: what was asked for; cores: what there is, as ``where`` says it.
    """

    def __init__(self, message: str, workers: int, threads: int, cores: int, where: str) -> None:
        super().__init__(message)
        self.workers, self.threads, self.cores, self.where = workers, threads, cores, where

    def refusal(self, resume: object | None) -> str:
        """The one line that refuses the run: this message, or for the ``resume`` of a run,
        which takes no ``--workers`` or ``--threads`` to change (the run's thread count is part
        of its results), what it needs instead."""
        if resume is None:
            return str(self)
        return (
            f"cannot resume {str(resume)!r} here: it runs {self.workers} worker(s) of "
            f"{self.threads} torch thread(s), {self.workers * self.threads} cores, and "
            f"{self.where} {self.cores}; a resume keeps the threads it ran with (its results "
            "depend on them): resume it where that many cores are free"
        )


def threads_per_worker(
    requested: int | None,
    workers: int,
    cores: int | None = None,
    where: str = "this process may use",
) -> int:
    """Torch intra-op threads for each of ``workers`` environment workers.

    Args:
        requested: the ``--threads`` the user asked for; ``None`` takes
            ``DEFAULT_THREADS_PER_WORKER``.
        workers: environment worker processes that run at the same time (1 for an in-process
            run).
        cores: cores available; ``None`` asks ``usable_cores()`` (this process's affinity).
        where: whose cores they are, as the error says it (e.g. ``"the Ray cluster has"``).

    Returns:
        The thread count each worker sets with ``torch.set_num_threads``.

    Raises:
        TooFewCores: ``workers * threads`` exceeds ``cores`` (one line naming the values, the
            limit and what to change).
        ValueError: an argument is not a positive integer.
    """
    workers = _positive("workers", workers)
    threads = _positive("threads", DEFAULT_THREADS_PER_WORKER if requested is None else requested)
    cores = usable_cores() if cores is None else _positive("cores", cores)
    if workers * threads <= cores:
        return threads
    if workers > cores:
        message = (
            f"--workers {workers} needs {workers} cores at one thread each; {where} {cores}: "
            f"use --workers {cores} or fewer"
        )
    else:
        asked = f"--threads {threads}" + (f" with --workers {workers}" if workers > 1 else "")
        more = " or fewer workers" if workers > 1 else ""
        message = (
            f"{asked} needs {workers * threads} cores; {where} {cores}: "
            f"use --threads {cores // workers}{more}"
        )
    raise TooFewCores(message, workers, threads, cores, where)
