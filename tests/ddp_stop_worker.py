"""Run by tests/test_distributed.py under torchrun: train on every rank; rank 0 asks to stop at step N.

Usage: torchrun --nproc_per_node=2 tests/ddp_stop_worker.py OUT_DIR STOP_STEP KEY=VALUE...
Rank 0 writes OUT_DIR/checkpoint.pt (the state at the stop) through the CLI's RunWriter.
"""

import sys
from pathlib import Path

from alexnet_lab.engine import distributed
from alexnet_lab.engine.config import make_config
from alexnet_lab.engine.trainer import StopRequested, fit
from alexnet_lab.engine.run_dir import RunWriter
from runhelpers import StopAt  # tests/ is this script's folder, first on sys.path


def main() -> None:
    out, stop_step = Path(sys.argv[1]), int(sys.argv[2])
    overrides = dict(arg.split("=", 1) for arg in sys.argv[3:])
    types = {"limit_train": int, "limit_test": int, "batch_size": int, "epochs": float, "lr": float}
    config = make_config("d2l", **{k: types.get(k, str)(v) for k, v in overrides.items()})
    with distributed.session(config.device) as env:
        callbacks = []
        if env.is_main:  # only rank 0 asks to stop, as when a signal reaches one process first
            out.mkdir(parents=True, exist_ok=True)
            callbacks = [StopAt(stop_step), RunWriter(out, config.to_dict())]
        try:
            fit(config, callbacks, **env.fit_kwargs())
        except StopRequested:
            pass


if __name__ == "__main__":
    main()
