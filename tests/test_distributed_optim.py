"""The optimizer under FSDP2, DDP and HSDP on gloo: same results as one process, sharded state,
and Newton-Schulz split across ranks (docs/method.md §4.1)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyperp.optim.sharding import Grid, MatrixLayout, WorkPlan, ns_flops
from support import subprocess_env
from training import OPTIMIZER_SPREAD

WORKER = str(Path(__file__).with_name("optim_worker.py"))


def run_worker(out: Path, nproc: int, *args: str) -> dict[str, list[dict]]:
    """Reports of every rank, for the dense and the MoE model."""
    out.mkdir(parents=True, exist_ok=True)
    if nproc == 1:
        command = [sys.executable, WORKER]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc-per-node", str(nproc), WORKER]
    done = subprocess.run(
        [*command, "--out", str(out), *args],
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        kind: [json.loads((out / f"{kind}-rank{r}.json").read_text()) for r in range(nproc)]
        for kind in ("dense", "moe")
    }


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return run_worker(out, 1, "--strategy", "single", "--ns-dtype", "fp32"), out


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("strategy", "nproc", "shard_size"), [("fsdp", 2, 0), ("ddp", 2, 0), ("hsdp", 4, 2)]
)
def test_sharded_optimizer_matches_one_process(single, tmp_path, strategy, nproc, shard_size):
    reports, single_dir = single
    out = tmp_path / strategy
    shards = ("--shard-size", str(shard_size))
    many = run_worker(out, nproc, "--strategy", strategy, *shards, "--ns-dtype", "fp32")
    for kind in ("dense", "moe"):  # the MoE model: 4 experts, a bank slice lives on one shard
        one, ranks = reports[kind][0], many[kind]
        expected = torch.load(single_dir / f"{kind}-weights.pt", weights_only=True)
        got = torch.load(out / f"{kind}-weights.pt", weights_only=True)
        check_same_results(one, ranks, expected, got)
        check_work_split(one, ranks)
        if strategy != "ddp":  # sharded state: each rank holds about 1/shards of it
            shards = shard_size or nproc
            for rank in ranks:
                assert rank["state_bytes"] <= (1.1 / shards) * rank["single_state_bytes"]


def check_same_results(one, ranks, expected, got) -> None:
    # The same global batch; results differ only by the order of floating-point reductions
    # (gradient reduce-scatter/all-reduce against one sum, norms from per-rank partial sums),
    # amplified by 4 steps of Newton-Schulz in fp32 (pinned: bf16 amplifies far more).
    spread = OPTIMIZER_SPREAD
    for step, loss in enumerate(one["losses"]):
        assert ranks[0]["losses"][step] == pytest.approx(loss, rel=spread.loss), step
    for name, value in expected.items():
        drift = (got[name] - value).norm() / value.norm()
        assert drift <= spread.weights, (name, drift.item())
    # Radii are per matrix and independent of sharding.
    for name, radius in one["radii"].items():
        for rank in ranks:
            torch.testing.assert_close(torch.tensor(rank["radii"][name]), torch.tensor(radius))


def check_work_split(one, ranks) -> None:
    # Every matrix (and every expert slice) is orthogonalized by exactly one rank per step.
    for step in range(len(one["steps"])):
        everyone = sorted(
            tuple(unit) for rank in ranks for unit in rank["steps"][step]["orthogonalized"]
        )
        assert everyone == sorted(tuple(u) for u in one["steps"][step]["orthogonalized"])
        # Balanced by FLOPs: greedy assignment keeps any two ranks within one largest matrix.
        loads = [rank["steps"][step]["ns_flops"] for rank in ranks]
        assert sum(loads) == pytest.approx(one["steps"][step]["ns_flops"])
        assert max(loads) - min(loads) <= one["largest_matrix_flops"]
    for rank in ranks:
        step = rank["steps"][-1]
        assert step["sent_bytes"] > 0 and step["received_bytes"] > 0


def test_work_plan_covers_every_matrix_once_and_balances_flops():
    # Two replicas x two shards; 2-D matrices of several shapes and a bank of 6 experts.
    shapes = [(256, 64), (64, 256), (128, 64), (64, 64), (6, 32, 64)]
    grid = Grid(shard_size=2, replica_size=2)
    layouts = [MatrixLayout.of(shape, "batch", 2) for shape in shapes]
    plan = WorkPlan(layouts, grid, ns_steps=5)
    units = [(i, j) for i, layout in enumerate(layouts) for j in range(layout.count)]
    assert sorted(plan.owner) == sorted(units)
    # A bank slice goes to a replica of the shard that holds it: experts 0-2 on shard 0.
    for j in range(6):
        assert plan.owner[(4, j)] % 2 == (0 if j < 3 else 1)
    costs = [ns_flops(layouts[i].rows, layouts[i].cols, 5) for i, _ in units]
    assert max(plan.load) - min(plan.load) <= max(costs)
    assert sum(plan.load) == pytest.approx(sum(costs))


def test_layout_matches_fsdp_row_split():
    # torch.chunk's split of 10 rows over 4 shards: 3, 3, 3, 1; of 3 rows: 1, 1, 1, 0.
    assert MatrixLayout.of((10, 8), "batch", 4).row_ranges == ((0, 3), (3, 6), (6, 9), (9, 10))
    assert MatrixLayout.of((3, 8), "batch", 4).row_ranges == ((0, 1), (1, 2), (2, 3), (3, 3))
    bank = MatrixLayout.of((4, 2, 5, 7), "batch", 2)  # 8 slices of 5 x 7, 2 per dim-0 index
    assert (bank.count, bank.per_row, bank.slices_on(1), bank.holder(5)) == (8, 2, (4, 8), 1)
    kernel = MatrixLayout.of((6, 3, 2, 2), "flatten", 2)  # one 6 x 12 matrix, rows split
    assert (kernel.count, kernel.rows, kernel.cols, kernel.split) == (1, 6, 12, True)


EXCHANGE_WORKER = str(Path(__file__).with_name("exchange_worker.py"))


def run_exchange(out: Path, nproc: int, *args: str) -> dict[str, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(nproc), EXCHANGE_WORKER, "--out", str(out), *args]
    done = subprocess.run(
        command, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        ns: [json.loads((out / f"rank{r}-{ns}.json").read_text()) for r in range(nproc)]
        for ns in ("fp32", "bf16")
    }


@pytest.mark.distributed
@pytest.mark.parametrize(("nproc", "only"), [(4, None), (4, "six"), (2, "three")])
def test_exchange_with_empty_shards_and_idle_ranks(tmp_path, nproc, only):
    # 6 rows on 4 ranks: 2, 2, 2, 0 (a rank without rows), two such matrices in one bucket;
    # with --only one matrix, every rank but its owner orthogonalizes nothing. Results match
    # one process (fp32, reduction order only), no NaN, and a bf16 exchange sends exactly half
    # the bytes of an fp32 one.
    flags = ("--only", only) if only else ()
    runs = run_exchange(tmp_path, nproc, *flags)
    fp32, bf16 = runs["fp32"], runs["bf16"]
    for name, expected in fp32[0]["single"].items():
        got, want = torch.tensor(fp32[0]["sharded"][name]), torch.tensor(expected)
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    owners = [rank["orthogonalized"] for rank in fp32]
    assert sum(owners) == len(fp32[0]["single"])
    if only:
        assert sorted(owners) == [0] * (nproc - 1) + [1]
    for name in bf16[0]["single"]:
        assert torch.isfinite(torch.tensor(bf16[0]["sharded"][name])).all(), name
    norms = 2 * 4 * len(fp32[0]["single"])  # two fp32 all-reduces of one norm per matrix
    for wide, narrow in zip(fp32, bf16):
        for step_fp32, step_bf16 in zip(wide["sent_bytes"], narrow["sent_bytes"]):
            assert step_fp32 - norms == 2 * (step_bf16 - norms)
    assert max(rank["sent_bytes"][-1] for rank in fp32) > norms  # rows did travel
