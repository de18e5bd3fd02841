"""Data-parallel training: sharding of every epoch, exact evaluation, torchrun runs that match one
process, and checkpoints that resume under a different number of processes (CPU, gloo, 2 processes);
two torchrun launchers meeting at a c10d rendezvous as two machines do, streaming an image folder.
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fakedata
from alexnet_lab.data.loader import BatchLoader
from alexnet_lab.engine import distributed
from alexnet_lab.engine.checkpoint import load_checkpoint
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.builders import prepare_model, splits_for
from alexnet_lab.engine.trainer import Callback, evaluate, fit
from alexnet_lab.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# The tiny recipe both the torchrun runs and the single-process references use. LeNet barely
# leaves chance accuracy in 32 steps, so the tests also compare the loss curves, which any error
# in sharding or gradient averaging changes.
RECIPE = dict(model="lenet", limit_train=2000, limit_test=1001, epochs=1.0, lr=0.9, batch_size=64,
              device="cpu")
# One test example in 1001; float reduction order differs between 1 and 2 processes.
ACC_TOLERANCE = 0.002
LOSS_RTOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def _loader(n, batch, rank, world, **kw):
    images = torch.arange(n, dtype=torch.int64).view(n, 1, 1).expand(n, 2, 2).to(torch.uint8)
    labels = torch.arange(n)  # the label is the example's index: batches reveal which examples
    return BatchLoader(images, labels, batch, resize=None, rank=rank, world_size=world, **kw)


def _indices(loader, epoch=0, start=0):
    loader.set_epoch(epoch)
    return [labels.tolist() for _, labels in loader.iterate(start)]


@pytest.mark.parametrize("n,global_batch,world", [(1000, 64, 2), (1001, 64, 2), (999, 12, 3), (130, 8, 4)])
def test_training_shards_are_disjoint_equal_and_form_the_single_process_batches(n, global_batch, world):
    per_rank = global_batch // world
    single = _indices(_loader(n, global_batch, 0, 1, shuffle=True, seed=3), epoch=2)
    ranks = [_indices(_loader(n, per_rank, r, world, shuffle=True, seed=3), epoch=2) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1                       # every rank runs the same steps
    for k, batches in enumerate(zip(*ranks)):
        assert len({len(b) for b in batches}) == 1                 # equal per-rank batches
        merged = [i for b in batches for i in b]
        assert len(set(merged)) == len(merged)                     # disjoint
        if k < n // global_batch:
            assert merged == single[k]                             # global batch k = the 1-process batch k
    seen = [i for r in ranks for b in r for i in b]
    assert n - world < len(seen) <= n and len(set(seen)) == len(seen)  # drops < world per epoch


@pytest.mark.parametrize("n,batch,world", [(1001, 256, 2), (10, 4, 3), (5, 256, 4), (10000, 256, 3)])
def test_evaluation_shards_cover_every_example_exactly_once(n, batch, world):
    seen = sorted(i for r in range(world)
                  for b in _indices(_loader(n, batch, r, world, shuffle=False, even_shards=False))
                  for i in b)
    assert seen == list(range(n))
    for rank in range(world):  # where an evaluation puts each process's results: its examples, in order
        loader = _loader(n, batch, rank, world, shuffle=False, even_shards=False)
        assert loader.positions().tolist() == [i for b in _indices(loader) for i in b]


def test_resume_position_means_the_same_examples_for_any_world_size():
    # Global batch 5 onwards of epoch 1: 2 processes from the start vs 1 process resuming at batch 5.
    single = _indices(_loader(700, 64, 0, 1, shuffle=True, seed=1), epoch=1, start=5)
    pair = [_indices(_loader(700, 32, r, 2, shuffle=True, seed=1), epoch=1) for r in range(2)]
    for k, batch in enumerate(single[:-1]):  # the last, partial batch may drop one example
        assert sorted(batch) == sorted(pair[0][k + 5] + pair[1][k + 5])


def test_single_process_environment_touches_nothing(monkeypatch):
    for var in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    env = distributed.init_from_env("auto")
    assert (env.rank, env.world_size, env.distributed, env.is_main) == (0, 1, False, True)
    model = torch.nn.Linear(2, 2)
    assert env.wrap_model(model) is model and env.fit_kwargs() == {}
    assert not torch.distributed.is_initialized()


def test_shared_outcome_in_one_process_runs_or_raises():
    env = distributed.DistEnv()
    assert distributed.shared_outcome(env, lambda: 7, run_here=True) == 7
    assert distributed.shared_outcome(env, lambda: 7, run_here=False) is None
    with pytest.raises(UserError, match="bad --out"):
        distributed.shared_outcome(env, lambda: (_ for _ in ()).throw(UserError("bad --out")), run_here=True)
    assert distributed.in_turn(env, lambda: "data") == "data"


def test_world_size_without_torchrun_variables_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UserError, match="torchrun"):
        distributed.init_from_env("cpu")


def test_device_choice_per_local_rank():
    assert distributed.pick_device("cpu", 3) == ("cpu", "gloo")
    with pytest.raises(UserError, match="mps"):
        distributed.pick_device("mps", 0)
    if not torch.cuda.is_available():
        assert distributed.pick_device("auto", 1) == ("cpu", "gloo")
        with pytest.raises(UserError, match="no CUDA GPU"):
            distributed.pick_device("cuda", 0)


def _torchrun(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "ALEXNET_LAB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", *args]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def splits():
    return splits_for(make_config("d2l", **RECIPE))


@pytest.fixture(scope="module")
def single_process_run(splits):
    """The reference: the same recipe and global batch in this one process."""
    rows = []

    class Rows(Callback):
        def on_log(self, row):
            rows.append(row)

    with fakedata.one_thread():  # module fixtures run before the function-scoped one_thread fixture
        summary = fit(make_config("d2l", **RECIPE), [Rows()], splits=splits)
    return summary, rows


def _cli_flags():
    flags = []
    for key, value in RECIPE.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


@pytest.mark.thorough  # a torchrun launch: a plain make test runs one, the c10d two-machine test
def test_torchrun_two_processes_match_one_process(tmp_path, splits, single_process_run):
    out = tmp_path / "run"
    result = _torchrun(["-m", "alexnet_lab", "train", *_cli_flags(), "--out", str(out)], tmp_path)
    # Rank 0 alone prints the chapter's lines and the plan; the others print nothing.
    assert result.stdout.count("examples/sec on cpu") == 1
    assert result.stderr.count("Training lenet") == 1 and "2 processes x 32" in result.stderr
    ddp = load_checkpoint(out / "checkpoint.pt")
    reference, ref_rows = single_process_run
    rows = ddp["run_state"]["metrics"]
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    assert rows[-1]["examples"] == RECIPE["limit_train"]  # the whole training set, counted once
    for got, want in zip(rows, ref_rows):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=LOSS_RTOL)
        assert got["train_acc"] == pytest.approx(want["train_acc"], abs=ACC_TOLERANCE)
    assert rows[-1]["test_acc"] == pytest.approx(reference["test_acc"], abs=ACC_TOLERANCE)
    # The logged test accuracy is that of the whole (odd-sized) test set: evaluate the saved
    # weights in one process and count correct answers.
    model = prepare_model(make_config("d2l", **RECIPE), torch.device("cpu"))
    model.load_state_dict(ddp["model_state"])
    test = BatchLoader(splits.test_images, splits.test_labels, 256, shuffle=False)
    check = evaluate(model, test, torch.device("cpu"))
    assert check["examples"] == RECIPE["limit_test"]
    assert round(rows[-1]["test_acc"] * RECIPE["limit_test"]) == check["correct"]
    for name in ("summary.json", "metrics.jsonl", "config.json", "curves.svg"):
        assert (out / name).is_file()
    # The 2-process run folder continues in one process through the CLI (extended to 2 epochs).
    from alexnet_lab.cli import main
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    resumed = load_checkpoint(out / "checkpoint.pt")["run_state"]
    assert resumed["step"] == 2 * ddp["run_state"]["step"] and resumed["examples"] == 2 * RECIPE["limit_train"]


@pytest.mark.thorough  # a torchrun launch: a plain make test runs one, the c10d two-machine test
def test_checkpoint_from_two_processes_resumes_in_one(tmp_path, splits, single_process_run):
    out, stop = tmp_path / "stopped", distributed.STOP_CHECK_EVERY  # rank 0 alone asks; all stop here
    assert 0 < stop < 2000 // 64
    worker = REPO / "tests" / "ddp_stop_worker.py"
    _torchrun([str(worker), str(out), str(stop), *[f"{k}={v}" for k, v in RECIPE.items()]], tmp_path)
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["world_size"] == 2
    state = payload["run_state"]
    # The position is the global batch: `stop` steps of 64 examples, whatever the number of processes.
    assert (state["epoch"], state["batch"], state["step"], state["examples"]) == (0, stop, stop, stop * 64)
    assert not any(k.startswith("module.") for k in payload["model_state"])  # unwrapped, not DDP's
    resumed = fit(make_config("d2l", **RECIPE), [], splits=splits, resume=payload)
    reference, ref_rows = single_process_run
    assert resumed["steps"] == reference["steps"]
    assert resumed["train_examples"] == reference["train_examples"]
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=LOSS_RTOL)
    assert resumed["test_acc"] == pytest.approx(reference["test_acc"], abs=ACC_TOLERANCE)


# --- two machines: torchrun's c10d rendezvous, an image folder streamed ------------------------------

STREAM_RECIPE = dict(model="lenet", epochs=2.0, lr=0.05, momentum=0.9, batch_size=8, device="cpu",
                     data_regime="stream")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_machines_meeting_at_a_c10d_rendezvous_stream_a_folder_like_one_process(tmp_path, monkeypatch):
    """Two torchrun launchers of one process each, as two machines would (`--nnodes 2 --rdzv-backend c10d
    --rdzv-endpoint HOST:PORT`, ranks assigned by the rendezvous), train on an image folder streamed by
    worker processes: the losses and weights match one process training the same global batch."""
    from imagedata import make_shapes

    folder = make_shapes(tmp_path / "shapes", per_class=12, classes=("circle", "cross", "square"))  # 30 train
    recipe = {**STREAM_RECIPE, "data": f"imagefolder:{folder}"}
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the machines share it, as over NFS
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "ALEXNET_LAB_OFFLINE": "1"}
    out, port = tmp_path / "run", _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-machines",
           "-m", "alexnet_lab", "train", *[f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()],
           "--no-report", "--out", str(out)]
    launchers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    try:
        results = [(launcher.wait(timeout=240), *launcher.communicate()) for launcher in launchers]
    finally:
        for launcher in launchers:
            launcher.kill()
    for code, stdout, stderr in results:
        assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert sum(stdout.count("examples/sec on cpu") for _, stdout, _ in results) == 1  # rank 0 alone reports
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["world_size"] == 2 and payload["config"]["data_regime"] == "stream"
    rows, saved = [], []

    class Record(Callback):
        def on_log(self, row):
            rows.append(row)

        def on_checkpoint(self, payload, is_best):
            saved.append(payload)

    config = make_config("d2l", **recipe)
    fit(config, [Record()], splits=splits_for(config))  # one process, the same global batch
    got = payload["run_state"]["metrics"]
    assert [r["step"] for r in got] == [r["step"] for r in rows] and got[-1]["step"] == 8  # 4 steps an epoch
    for a, b in zip(got, rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=LOSS_RTOL)
    for key, value in payload["model_state"].items():
        torch.testing.assert_close(value, saved[-1]["model_state"][key], rtol=1e-4, atol=1e-6)
    # The final test, split between the two processes, kept every validation image's prediction in order.
    with (out / "predictions.csv").open(newline="") as fh:
        kept = list(csv.DictReader(fh))
    test_files = splits_for(config).test_files
    assert [row["path"] for row in kept] == test_files and len(kept) == 6
    assert sum(row["true"] == row["predicted"] for row in kept) == round(got[-1]["test_acc"] * len(kept))


# --- leaving the job: together, without an abort, and never waiting forever --------------------------

@pytest.mark.filterwarnings("ignore:.*reduce_op.*:FutureWarning")  # gc.get_objects meets a deprecated alias
def test_teardown_frees_ddp_before_destroying_the_process_group(tmp_path, splits, monkeypatch):
    """A DDP module (with its reducer, which holds the group) left in cyclic garbage is freed by the
    first collection; if that comes during the interpreter's shutdown, after the group was destroyed,
    gloo's threads abort the process ("terminate called without an active exception", 1 run in 8).
    In a fresh process `fit` leaves one: the first lazy import inside it keeps fit's frame, and with it
    the model, in a reference cycle. teardown frees such garbage while the group still exists."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    def live_ddp():
        return sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    gc.disable()  # as when no collection happens to run before the process exits
    try:
        fit(make_config("d2l", **RECIPE), [], splits=splits.head(128, 64), wrap_model=DistributedDataParallel)
        cycle = [DistributedDataParallel(torch.nn.Linear(2, 2))]  # and one in cyclic garbage for certain
        cycle.append(cycle)
        del cycle
        assert live_ddp() >= 1
        seen = []
        destroy = dist.destroy_process_group
        monkeypatch.setattr(dist, "destroy_process_group", lambda *a: (seen.append(live_ddp()), destroy(*a)))
        distributed.teardown(distributed.DistEnv(rank=0, world_size=2, backend="gloo"))
        assert seen == [0] and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_collective_that_times_out_or_loses_its_peer_is_a_clear_error(monkeypatch):
    env = distributed.DistEnv(rank=1, world_size=2, backend="gloo", timeout_s=5.0)
    monkeypatch.setattr(distributed, "init_from_env", lambda device, timeout_s: env)
    gloo = "[third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation"
    with pytest.raises(distributed.RankTimeout, match=r"Process 1 of 2 waited more than 5 s \(--ddp-timeout\)"):
        with distributed.session("cpu", 5.0):
            raise RuntimeError(gloo)
    with pytest.raises(distributed.PeerFailure, match=r"Process 1 of 2 lost its connection to the others"):
        with distributed.session("cpu", 5.0):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:21443")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # other failures stay as they are
        with distributed.session("cpu", 5.0):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x5 and 6x7)")


def _torchrun_proc(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "ALEXNET_LAB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", *args]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


def _workers(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started (its children, with RANK in their environment)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
        if ppid == launcher_pid and rank is not None:
            ranks[int(rank)] = int(entry.name)
    return ranks


@pytest.mark.thorough  # a torchrun launch waiting out a timeout: CI=true
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc (Linux)")
def test_a_rank_that_stops_answering_ends_the_job_after_ddp_timeout(tmp_path, splits):
    """SIGSTOP one rank mid-training: the other gives up after --ddp-timeout with a message naming it."""
    import signal
    import time

    out = tmp_path / "run"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in {**RECIPE, "epochs": 1000}.items()]
    proc = _torchrun_proc(["-m", "alexnet_lab", "train", *flags, "--ddp-timeout", "5", "--no-report",
                           "--out", str(out)], tmp_path)
    stopped = None
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists():  # written when training starts, past every start-up wait
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        workers = _workers(proc.pid)
        stopped = workers[1]
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        while _alive(workers[0]):
            assert time.monotonic() - started < 60, "rank 0 kept waiting for the stopped rank"
            time.sleep(0.1)
        waited = time.monotonic() - started
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)  # lets it meet torchrun's SIGTERM
        try:
            stdout, stderr = proc.communicate(timeout=90)
        finally:
            proc.kill()
    assert 4 < waited < 45
    assert proc.returncode != 0
    assert "Process 0 of 2 waited more than 5 s (--ddp-timeout) for the others in a collective operation" in stderr
    assert not re.search(r"\[rank\d\]: Traceback", stderr), stderr  # none from a rank (torchrun prints its own)

