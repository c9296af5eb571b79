"""Fanning trainings out: in this process, over a local process pool, or as Ray tasks.

:func:`fan_out` maps a top-level (picklable) function over job descriptions on the backend of
``[compute]`` and returns the results in job order, calling ``on_result`` as each one arrives:

* ``sequential`` - one after the other in this process;
* ``process`` (default) - a *spawn* :class:`~concurrent.futures.ProcessPoolExecutor` of
  ``workers`` processes (every CPU by default);
* ``ray`` - real Ray core tasks (``ray.remote(num_cpus=1)``) on the cluster at ``address``, or on
  a local instance of ``workers`` CPUs started for the run and shut down after it.

Each job seeds everything itself and runs torch on one thread
(:func:`~strategies.agents.learner.seed_everything`), and a worker process is told to use one
thread before torch loads (``OMP_NUM_THREADS`` and friends), so a result does not depend on
where it ran: the three backends give bit-identical networks (tested). We use the standard
library's pool and Ray rather than a scheduler of our own: Ray already does placement, retries
and multi-machine clusters, and the pool needs nothing installed.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from bot.cpus import usable_cpus
from config.schema import ComputeConfig

Job = TypeVar("Job")
Result = TypeVar("Result")

ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
"""Set in every worker before torch is imported: one thread per training."""


class ComputeError(RuntimeError):
    """The compute backend could not be used (Ray not installed, cluster unreachable)."""


def worker_count(compute: ComputeConfig) -> int:
    """How many trainings run at once: ``workers``, else every CPU this process may use
    (:func:`bot.cpus.usable_cpus`: a container's quota, not the host's count)."""
    return compute.workers or usable_cpus()


def fan_out(
    function: Callable[[Job], Result],
    jobs: Sequence[Job],
    compute: ComputeConfig,
    *,
    on_result: Callable[[int, Result], None] | None = None,
) -> list[Result]:
    """``[function(job) for job in jobs]`` on ``compute``'s backend, in job order.

    ``function`` must be a top-level function; ``on_result(index, result)`` is called in this
    process as each job finishes (in completion order). An exception in a job is raised here.
    """
    if not jobs:
        return []
    if compute.backend == "sequential":
        return _sequential(function, jobs, on_result)
    if compute.backend == "ray":
        return _ray(function, jobs, compute, on_result)
    return _pool(function, jobs, compute, on_result)


def _sequential(function, jobs, on_result) -> list:
    results = []
    for index, job in enumerate(jobs):
        results.append(function(job))
        if on_result is not None:
            on_result(index, results[-1])
    return results


def _init_worker() -> None:
    os.environ.update(ONE_THREAD)


def _pool(function, jobs, compute: ComputeConfig, on_result) -> list:
    workers = min(worker_count(compute), len(jobs))
    context = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(jobs)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        futures = {pool.submit(function, job): index for index, job in enumerate(jobs)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_result is not None:
                on_result(index, results[index])
    return results


def _ray(function, jobs, compute: ComputeConfig, on_result) -> list:
    try:
        import ray
    except ImportError as exc:
        raise ComputeError(
            "[compute] backend = 'ray' needs the ray package: pip install 'ray>=2.9'"
        ) from exc
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if compute.address:
                ray.init(
                    address=compute.address,
                    runtime_env={"env_vars": ONE_THREAD},
                    log_to_driver=False,
                )
            else:
                ray.init(
                    num_cpus=worker_count(compute),
                    include_dashboard=False,
                    runtime_env={"env_vars": ONE_THREAD},
                    log_to_driver=False,
                )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = compute.address or "a local instance"
            raise ComputeError(f"[compute] could not start Ray on {where}: {exc}") from exc
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_with_one_thread)
        pending = {task.remote(function, job): index for index, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                index = pending.pop(ref)
                results[index] = ray.get(ref)
                if on_result is not None:
                    on_result(index, results[index])
        return results
    finally:
        if started_here:
            ray.shutdown()


def _with_one_thread(function: Callable[[Any], Any], job: Any) -> Any:
    """Run ``function(job)`` in a Ray worker with one thread (a local instance started here sets
    the variables for every worker before it imports anything; on a cluster started elsewhere
    torch's own thread count, set by the seeding, is what counts)."""
    os.environ.update(ONE_THREAD)
    return function(job)
