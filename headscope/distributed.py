"""Several processes, one result: shards of the work, combined with torch.distributed, written by rank 0.

headscope launches no processes: `torchrun` does (`torchrun --nproc-per-node N -m headscope ...`), and the
CLI joins the process group it describes (`init_from_environment`: NCCL on GPUs, gloo on CPUs). From
Python, a process group someone already initialised is picked up by `capture`, `classify_heads`,
`copying_scores` and `sweep`; without one (or with `distributed=False`) they run as one process.

Every rank is given the same inputs (the same dataset from the same seed); each works on its shard
(`shard`: a contiguous range of prompts, or every world-th variant of a sweep) and `gather` hands every
rank every shard's partial result, in rank order. What is combined is always per-prompt sums and counts,
or per-prompt metric values, never averages of averages, so the result is the single-process one up to
the order of floating-point sums. A rank whose work raises makes every rank raise `DistributedError`
with that rank's message; a rank that dies or hangs makes the others fail after `timeout_s()` seconds
(torchrun also stops the whole job when a process exits with an error). How they fail depends on the
backend: under gloo the collective raises and every rank raises `DistributedError` with the timeout
message; under NCCL, PyTorch's watchdog ends the process itself once the timeout passes
(`TORCH_NCCL_ASYNC_ERROR_HANDLING`, default 3: tear down without aborting the communicator), so the job
stops with the watchdog's "collective operation timeout" in the log and that message never shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from headscope.errors import HeadscopeError

T = TypeVar("T")
TIMEOUT_ENV = "HEADSCOPE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800


class DistributedError(HeadscopeError):
    """One rank of a multi-process run failed, timed out, or was given other inputs than rank 0."""


def timeout_s() -> float:
    """How long a rank waits for the others at a collective: $HEADSCOPE_DIST_TIMEOUT_S, else 30 minutes."""
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise DistributedError(f"${TIMEOUT_ENV} must be a positive number of seconds, not {value!r}")
    return seconds


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another launcher that sets WORLD_SIZE > 1) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_environment() -> None:
    """Join the process group that torchrun's environment describes: NCCL when every process of this node
    has a GPU of its own, else gloo (CPU processes)."""
    if dist.is_initialized():
        return
    processes_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    backend = "nccl" if torch.cuda.is_available() and processes_here <= torch.cuda.device_count() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(_local_rank())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))


def close() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active(distributed: bool | None = None) -> bool:
    """Whether to split work across processes: `distributed` None means "if a group of several is there"."""
    present = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not present:
        raise DistributedError("distributed=True needs an initialised process group of several processes: "
                               "launch with torchrun, or call torch.distributed.init_process_group first")
    return present if distributed is None else bool(distributed)


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes the group has (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer() -> bool:
    """Rank 0 (or a single process): the one that prints and writes output files."""
    return rank() == 0


def local_device(device: str) -> str:
    """`cuda` means this process's own GPU (cuda:LOCAL_RANK) under a launcher; anything else is kept."""
    if device != "cuda" or not launched_by_torchrun():
        return device
    if _local_rank() >= torch.cuda.device_count():
        raise DistributedError(f"process {_local_rank()} of this node has no GPU of its own (the node has "
                               f"{torch.cuda.device_count()}): launch at most that many processes per node")
    return f"cuda:{_local_rank()}"


def shard(n: int, of_rank: int | None = None, of_world: int | None = None) -> range:
    """The contiguous part of range(n) that a rank takes; sizes differ by at most one."""
    r = rank() if of_rank is None else of_rank
    w = world_size() if of_world is None else of_world
    return range(n * r // w, n * (r + 1) // w)


def gather(work: Callable[[], T], split: bool = True) -> list[T]:
    """Run `work` on this rank, and return every rank's result, in rank order, on every rank; when the
    work is not `split` across processes, just `[work()]`.

    If any rank's `work` raises, every rank raises `DistributedError` naming the first failed rank and its
    message, instead of the others waiting for it forever.
    """
    if not split:
        return [work()]
    try:
        local, error = work(), None
    except Exception as err:  # reported to every rank below, then raised everywhere
        local, error = None, " ".join(str(err).splitlines()) or type(err).__name__
    gathered: list = [None] * world_size()
    try:
        dist.all_gather_object(gathered, (error, local))
    except RuntimeError as err:  # a rank died or hung: gloo raises once the timeout passes (NCCL's watchdog
        # ends this process instead, unless $TORCH_NCCL_ASYNC_ERROR_HANDLING is 0 or 2)
        raise DistributedError(f"rank {rank()} of {world_size()}: the other processes did not answer within "
                               f"{timeout_s():.0f} s ({type(err).__name__}); one has failed or is stuck "
                               f"(${TIMEOUT_ENV} sets the wait)") from err
    failed = [(r, e) for r, (e, _) in enumerate(gathered) if e is not None]
    if failed:
        failed_rank, message = failed[0]
        raise DistributedError(f"rank {failed_rank} of {world_size()} failed: {message}")
    return [value for _, value in gathered]


def check_same_dataset(dataset) -> None:
    """Fail every rank unless every rank holds the same prompts (same tokens, same padding)."""
    check_same("dataset", dataset.digest())


def check_same(what: str, value: object) -> None:
    """Fail every rank unless every rank passes the same `value` (e.g. a digest of its dataset)."""
    values = gather(lambda: value)
    if any(v != values[0] for v in values):
        different = next(r for r, v in enumerate(values) if v != values[0])
        raise DistributedError(f"rank {different} was given another {what} than rank 0: every process must "
                               "get the same options (and the same seed)")

