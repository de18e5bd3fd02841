"""Data-parallel training across processes and machines: the torchrun environment, DDP, teardown.

`init_from_env` reads what torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); outside
torchrun (or with one process) it returns a single-process `DistEnv` and touches nothing. Across
machines (`torchrun --nnodes N --rdzv-backend c10d`) RANK is global and LOCAL_RANK counts on each
machine: GPU LOCAL_RANK, per-machine work (the data's manifest, a download) on LOCAL_RANK 0 first,
this machine's CPUs shared by its LOCAL_WORLD_SIZE processes; the run folder is RANK 0's. GROUP_RANK
(the machine's number) is needed by none of these.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from alexnet_lab.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
STOP_CHECK_EVERY = 10  # steps between the ranks' agreements on a stop request (one tiny all-reduce)
DEFAULT_TIMEOUT_S = 300.0  # --ddp-timeout's default (TrainConfig.ddp_timeout): a wait in a collective
# Start-up waits (one process per machine downloading or decoding the data while the others wait for it)
# may take long on their own: they get at least torch's default limit of 30 minutes, as before.
STARTUP_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. rank 0 is the one that prints and writes files."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None   # the device this rank trains on ("cuda:<local_rank>" or "cpu")
    backend: str | None = None  # nccl on CUDA, gloo on CPU; None when single-process
    timeout_s: float = DEFAULT_TIMEOUT_S  # how long a collective waits for the other ranks
    startup_group: object = field(default=None, compare=False, repr=False)  # gloo group for start-up waits

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """DDP around `model` (gradients averaged over ranks in backward); identity when single-process."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel
        device_ids = [torch.device(self.device).index] if self.backend == "nccl" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def fit_kwargs(self) -> dict:
        """The arguments `trainer.fit` takes for this process."""
        if not self.distributed:
            return {}
        return {"rank": self.rank, "world_size": self.world_size, "wrap_model": self.wrap_model}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"Environment variable {name}={value!r} is not a whole number "
                        "(it is normally set by torchrun).") from None


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 outside torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def launched_rank() -> int:
    """RANK as torchrun set it (0 outside torchrun)."""
    return _env_int("RANK", 0)


def launched_local_world_size() -> int:
    """LOCAL_WORLD_SIZE as torchrun set it: the job's processes on this machine (1 outside torchrun)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1))


def pick_device(device: str, local_rank: int) -> tuple[str, str]:
    """(device, backend) for this rank: CUDA GPU number `local_rank` with nccl, else the CPU with gloo."""
    if device == "mps" or device.startswith("mps:"):
        raise UserError("Multi-process training (torchrun) is not supported on Apple GPUs (mps). "
                        "Use --device cpu, or run a single process.")
    wants_cuda = device == "cuda" or device.startswith("cuda:") or (device == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        return "cpu", "gloo"
    if not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible. Use --device cpu or auto.")
    if device.startswith("cuda:"):
        raise UserError(f"--device {device} pins one GPU, but under torchrun each process takes the GPU "
                        "of its LOCAL_RANK. Use --device cuda (or auto), and CUDA_VISIBLE_DEVICES to choose GPUs.")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"This process has LOCAL_RANK {local_rank} but the machine shows {count} GPU(s): "
                        f"use --nproc_per_node={count} (at most one process per GPU).")
    return f"cuda:{local_rank}", "nccl"


class PeerFailure(UserError):
    """A collective operation failed because another process of the job ended or stopped answering;
    every rank reports its own (the one at fault may say nothing)."""


class RankTimeout(PeerFailure):
    """A collective operation waited longer than --ddp-timeout: another process stopped answering."""


def init_from_env(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistEnv:
    """Join the process group torchrun set up; single-process `DistEnv` when WORLD_SIZE is absent or 1.

    `timeout_s` bounds every wait in a collective (gloo and nccl alike): a rank that stops answering
    (SIGSTOP, a debugger, a hung device) ends the job with `RankTimeout` instead of a silent wait."""
    world_size = launched_world_size()
    if world_size <= 1:
        return DistEnv()
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} are not: start "
                        "multi-process runs with torchrun (see 'Multi-GPU and multi-node' in README.md).")
    import torch.distributed as dist
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device_name, backend = pick_device(device, local_rank)
    if backend == "nccl":
        torch.cuda.set_device(device_name)
    startup_group = None
    if not dist.is_initialized():
        # init_method env:// reads MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE.
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=torch.device(device_name) if backend == "nccl" else None)
        startup_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(
            seconds=max(timeout_s, STARTUP_TIMEOUT_S)))
    return DistEnv(rank, world_size, local_rank, device_name, backend, timeout_s, startup_group)


def seed_per_rank(seed: int, rank: int, step: int) -> None:
    """Different random streams per rank (dropout masks) once the weights are identical.

    Without it every rank would draw the same masks for different examples. A function of
    (seed, rank, step), so a resumed run is reproducible for a given number of processes.
    """
    torch.manual_seed((seed * 1_000_003 + (rank + 1) * 7_919 + step) % 2**63)


def agree_to_stop(requested: bool, step: int, device: torch.device) -> bool:
    """True on every rank at the same step once any rank has asked to stop (e.g. on a signal).

    Ranks can see a signal at different steps; stopping apart would pair the stopping rank's
    checkpoint all-reduce with the others' gradient all-reduce. So the requests are combined
    every STOP_CHECK_EVERY steps, a host-device sync that often (callbacks' should_stop must stay
    True once True).
    """
    if step % STOP_CHECK_EVERY:
        return False
    import torch.distributed as dist
    flag = torch.tensor([1.0 if requested else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())  # the sync point, every STOP_CHECK_EVERY steps only


def teardown(env: DistEnv, *, together: bool = True) -> None:
    """Leave the job (idempotent). `together` (a normal finish): wait for every rank first, so that
    no rank tears its process group down while another still talks to it. After an error, leave
    without waiting.

    Before the group is destroyed, objects still holding it are freed: DDP's reducer and its pending
    work outlive `fit` in reference cycles, and when the garbage collector first meets them during
    the interpreter's shutdown, gloo's threads die with the process ("terminate called without an
    active exception", exit -6; 1 run in 8 on 2 CPU processes)."""
    if env.distributed:
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                if together:
                    dist.barrier()
            finally:
                gc.collect()
                dist.destroy_process_group()
                gc.collect()


@contextmanager
def session(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S):
    """`with session(config.device) as env:` joins the job (if any) and always leaves it. A collective
    that waited past `timeout_s` becomes a `RankTimeout` naming --ddp-timeout."""
    env = init_from_env(device, timeout_s)
    try:
        yield env
    except BaseException as exc:
        teardown(env, together=False)
        if env.distributed and isinstance(exc, RuntimeError):
            where = f"Process {env.rank} of {env.world_size}"
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            resume = "The job ends here; continue it from its last checkpoint with 'train --resume RUN_DIR'"
            if is_timeout(exc):
                raise RankTimeout(
                    f"{where} waited more than {env.timeout_s:g} s (--ddp-timeout) for the others in a "
                    f"collective operation ({cause}): another process stopped answering (stopped, killed, "
                    f"stuck, or much slower). {resume}, and raise --ddp-timeout if one process may "
                    "legitimately pause that long (e.g. saving a large checkpoint).") from None
            if is_connection_lost(exc):
                raise PeerFailure(f"{where} lost its connection to the others ({cause}): another process "
                                  f"ended (its own message, if any, says why). {resume}.") from None
        raise
    teardown(env)


def is_timeout(exc: BaseException) -> bool:
    """Whether `exc` is a collective that timed out: gloo says "Timed out waiting 5000ms for recv" or
    "Application timeout caused pair closure"; nccl's watchdog "... timeout ...". """
    return isinstance(exc, RuntimeError) and re.search(r"time[d ]?\s?out", str(exc), re.IGNORECASE) is not None


def is_connection_lost(exc: BaseException) -> bool:
    """Whether `exc` is a collective whose peer went away (gloo: "Connection closed by peer", "Connection
    reset by peer"; nccl: "remote process exited")."""
    return isinstance(exc, RuntimeError) and re.search(
        r"closed by peer|reset by peer|broken pipe|remote process exited", str(exc), re.IGNORECASE) is not None


def shared_outcome(env: DistEnv, fn, *, run_here: bool):
    """Run `fn` where `run_here`, then let every rank know whether it failed with a UserError.

    If any rank failed, the lowest failing rank re-raises its error (printed once, exit 2) and the
    other ranks exit with status 2 quietly, instead of waiting at the next collective until
    torchrun tears the job down. Returns fn's result (None where it did not run).
    """
    result, message = None, None
    if run_here:
        try:
            result = fn()
        except UserError as exc:
            message, error = str(exc), exc
    if not env.distributed:
        if message is not None:
            raise error
        return result
    import torch.distributed as dist
    messages = [None] * env.world_size
    dist.all_gather_object(messages, message, group=env.startup_group)  # one rank may load data meanwhile
    failed = [rank for rank, m in enumerate(messages) if m is not None]
    if failed:
        if failed[0] == env.rank:
            raise error
        raise SystemExit(2)
    return result


def in_turn(env: DistEnv, fn):
    """`fn` on the first process of each machine, then on the others (e.g. a dataset download
    happens once per machine); a UserError anywhere stops every rank cleanly."""
    first = env.local_rank == 0
    result = shared_outcome(env, fn, run_here=first)
    later = shared_outcome(env, fn, run_here=not first)
    return result if first else later
