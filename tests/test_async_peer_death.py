"""A rank that dies while an asynchronous checkpoint is written: the survivor's error names the
step of that save and the dead rank (not a full disk, not a later step)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from support import subprocess_env

RANK = textwrap.dedent(
    """
    import datetime, os, sys
    import torch, torch.distributed as dist
    from hyperp.train.checkpoint import Checkpointer, CheckpointError

    rank, where = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method=f"file://{where}/store", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=60))

    class Shards:  # each rank's own tensor, so that each rank writes a file of its own
        def __init__(self):
            self.value = torch.randn(8_000_000)
        def state_dict(self):
            return {f"rank{rank}": self.value}
        def load_state_dict(self, state):
            pass

    checkpointer = Checkpointer(f"{where}/checkpoints", {"shards": Shards()}, keep=2,
                                async_save=True, log=lambda line: None)
    checkpointer.save(1)
    checkpointer.wait()
    checkpointer.save(2)
    if rank == 1:
        os._exit(3)  # dies while its shards of step 2 are being written
    try:
        checkpointer.wait()
    except CheckpointError as error:
        print("ERROR", error, flush=True)
        sys.exit(2)
    print("no error", flush=True)
    """
)


@pytest.mark.distributed
def test_a_rank_dying_during_an_async_save_is_named_with_the_step(tmp_path):
    (tmp_path / "rank.py").write_text(RANK)
    ranks = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "rank.py"), str(rank), str(tmp_path)],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    survivor, _ = ranks[0].communicate(timeout=240)
    ranks[1].communicate(timeout=60)
    assert ranks[1].returncode == 3
    assert ranks[0].returncode == 2, survivor
    line = next(line for line in survivor.splitlines() if line.startswith("ERROR"))
    assert "the checkpoint of step 2 was not written: rank 1 (pid " in line, line
    assert "died during the save; the previous checkpoint is intact" in line
    assert (tmp_path / "checkpoints" / "step_00000001").is_dir()
