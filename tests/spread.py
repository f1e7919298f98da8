"""How far apart runs drift that differ only in the order of floating-point reductions.

One process against DDP, FSDP2 and HSDP, one batch against gradient accumulation, and resharded
resumes: each pair computes the same thing, summed in another order. Newton-Schulz amplifies the
rounding, and far more in bf16 than in fp32, so the tests that compare such runs pin the
precision they compare in, with tolerances set from the spread this script measures
(``tests/training.py`` holds them, with the figures):

    .venv/bin/python tests/spread.py --seeds 3 --json spread.json

For each Newton-Schulz precision and seed it trains the pairs the tests train (the same configs,
from ``tests/training.py``) and prints the largest relative loss difference over the steps, and
the largest absolute and relative (per tensor, Frobenius) difference of the final weights.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hyperp.train.trainer import train
from support import prepare_small_corpus, subprocess_env
from training import (
    MATCH_ONE,
    STOP_HALFWAY,
    config,
    final_weights,
    logged,
    torchrun,
)

WORKER = str(Path(__file__).with_name("optim_worker.py"))


def loss_spread(a: Path, b: Path, key: str = "loss") -> float:
    one, two = logged(a, key), logged(b, key)
    assert one.keys() == two.keys() and one, (a, b)
    return max(abs(two[s] - one[s]) / abs(one[s]) for s in one)


def weight_spread(expected: dict, got: dict) -> tuple[float, float]:
    """Largest elementwise |difference| and largest per-tensor ||difference|| / ||expected||."""
    absolute = relative = 0.0
    for name, want in expected.items():
        difference = (got[name].float() - want.float()).abs()
        absolute = max(absolute, difference.max().item())
        relative = max(relative, (difference.norm() / want.float().norm().clamp_min(1e-30)).item())
    return absolute, relative


def compare(reference: Path, run: Path) -> dict[str, float]:
    absolute, relative = weight_spread(final_weights(reference), final_weights(run))
    return {"loss": loss_spread(reference, run), "weight_abs": absolute, "weight_rel": relative}


def trainer_pairs(corpus: Path, work: Path, seed: int, ns: str) -> dict[str, dict]:
    """The trainer-level comparisons of tests/test_train.py and tests/test_checkpoint.py."""
    pinned = {"train.seed": seed, "optim.ns_dtype": ns}
    results = {}
    single = work / "single"
    train(config(corpus, **MATCH_ONE, **pinned), single)
    for strategy, nproc in (("ddp", 2), ("fsdp", 2), ("hsdp", 4)):
        out = work / strategy
        done = torchrun(corpus, out, nproc, strategy, **MATCH_ONE, **pinned)
        assert done.returncode == 0, done.stdout + done.stderr
        results[f"{strategy}{nproc} vs 1"] = {
            **compare(single, out),
            "val_loss": loss_spread(single, out, "val_loss"),
        }
    plain = {**STOP_HALFWAY, **pinned}
    one = work / "one-batch"
    train(config(corpus, **plain), one)
    accumulated = work / "accumulated"
    train(config(corpus, **plain, **{"train.grad_accum": 2}), accumulated)
    results["grad_accum 2 vs 1"] = {"loss": loss_spread(one, accumulated)}
    stopped = work / "stopped-fsdp2"
    done = torchrun(corpus, stopped, 2, args=("--stop-after", "4"), **plain)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copytree(stopped, work / "fsdp2-to-1")
    train(config(corpus, **plain), work / "fsdp2-to-1")
    results["fsdp2 -> 1 vs 1"] = compare(one, work / "fsdp2-to-1")
    done = torchrun(corpus, stopped, 2, "ddp", **plain)
    assert done.returncode == 0, done.stdout + done.stderr
    results["fsdp2 -> ddp2 vs 1"] = compare(one, stopped)
    return results


def optimizer_pairs(work: Path, seed: int, ns: str) -> dict[str, dict]:
    """tests/test_distributed_optim.py: the optimizer alone, 4 steps, dense and MoE."""

    def worker(name: str, nproc: int, *args: str) -> Path:
        out = work / f"optim-{name}"
        out.mkdir()
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        command = [sys.executable, *(launcher if nproc > 1 else []), WORKER, *args]
        command += ["--out", str(out), "--seed", str(seed), "--ns-dtype", ns]
        subprocess.run(command, env=subprocess_env(OMP_NUM_THREADS="1"), check=True)
        return out

    single = worker("single", 1, "--strategy", "single")
    results = {}
    for strategy, nproc, shard in (("fsdp", 2, 0), ("ddp", 2, 0), ("hsdp", 4, 2)):
        out = worker(strategy, nproc, "--strategy", strategy, "--shard-size", str(shard))
        for kind in ("dense", "moe"):
            one = json.loads((single / f"{kind}-rank0.json").read_text())["losses"]
            many = json.loads((out / f"{kind}-rank0.json").read_text())["losses"]
            expected = torch.load(single / f"{kind}-weights.pt", weights_only=True)
            got = torch.load(out / f"{kind}-weights.pt", weights_only=True)
            absolute, relative = weight_spread(expected, got)
            results[f"optimizer {kind} {strategy}{nproc} vs 1"] = {
                "loss": max(abs(b - a) / abs(a) for a, b in zip(one, many)),
                "weight_abs": absolute,
                "weight_rel": relative,
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()
    measured: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        corpus = prepare_small_corpus(Path(scratch) / "corpus")
        for ns in args.precisions:
            for seed in range(args.seeds):
                work = Path(scratch) / f"{ns}-{seed}"
                work.mkdir()
                pairs = {**trainer_pairs(corpus, work, seed, ns), **optimizer_pairs(work, seed, ns)}
                for name, values in pairs.items():
                    measured.setdefault(ns, {}).setdefault(name, []).append(values)
                print(f"{ns} seed {seed} done", file=sys.stderr)
    for ns, pairs in measured.items():
        print(f"\nNewton-Schulz in {ns}: largest over {args.seeds} seeds")
        print(
            f"{'comparison':34s} {'loss rel':>10s} {'val rel':>10s} {'w abs':>10s} {'w rel':>10s}"
        )
        for name, runs in pairs.items():
            cells = [
                max(run[key] for run in runs) if key in runs[0] else float("nan")
                for key in ("loss", "val_loss", "weight_abs", "weight_rel")
            ]
            print(f"{name:34s} " + " ".join(f"{c:10.2e}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()
