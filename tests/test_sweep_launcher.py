"""The `[launcher]` table of a sweep file, what it becomes for sbatch, and the cluster docs'
worked example (no SLURM needed; tests/test_slurm.py submits to a real one)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hyperp.data import prepare
from hyperp.sweep import RunSpec, SlurmOptions, expand, load_sweep, submit_sweep
from hyperp.sweep.slurm import _sbatch_parameters, allocation_command
from hyperp.sweep.spec import write_sweep_record
from support import subprocess_env

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cluster.md"


def sweep_file(directory: Path, launcher: str, axes: str = '"optim.lr" = [0.01]') -> Path:
    (directory / "base.toml").write_text("")
    path = directory / "sweep.toml"
    path.write_text(f'base = "base.toml"\n[axes]\n{axes}\n[launcher]\n{launcher}\n')
    return path


def test_the_launcher_table_becomes_sbatch_options_and_survives_in_the_sweep_directory(tmp_path):
    spec = load_sweep(
        sweep_file(
            tmp_path,
            'kind = "slurm"\npartition = "gpu"\nnodes = 2\ngpus_per_node = 4\nmem = 64000\n'
            'time = "1-02:30:00"\nsbatch = ["--exclusive", "#SBATCH --reservation=big"]\n'
            'setup = "module load cuda"\nqos = "high"',
            axes='"train.nproc" = [8]',
        )
    )
    assert spec.launcher == "slurm"
    assert spec.slurm == SlurmOptions(
        partition="gpu",
        nodes=2,
        gpus_per_node=4,
        mem="64000M",
        time=24 * 60 + 2 * 60 + 30,
        sbatch=("--exclusive", "#SBATCH --reservation=big"),
        setup=("module load cuda",),
        qos="high",
    )
    parameters = _sbatch_parameters(spec)
    assert parameters["nodes"] == 2 and parameters["ntasks_per_node"] == 1
    assert parameters["gpus_per_node"] == 4 and parameters["time"] == 1590
    assert parameters["additional_parameters"] == {
        "requeue": True,
        "exclusive": True,
        "reservation": "big",
    }
    assert parameters["setup"] == ["module load cuda"] and parameters["qos"] == "high"
    assert "account" not in parameters and "cpus_per_task" not in parameters
    # The sweep directory alone gives back the same launcher.
    write_sweep_record(spec, expand(spec))
    again = load_sweep(spec.out)
    assert (again.launcher, again.slurm) == (spec.launcher, spec.slurm)
    assert [r.nproc for r in expand(again)] == [8]
    for text, minutes in (("90", 90), ("1:30", 2), ("2:00:00", 120), ("3-0", 3 * 1440)):
        (tmp_path / "t.toml").write_text(f'base = "base.toml"\n[launcher]\ntime = "{text}"\n')
        assert load_sweep(tmp_path / "t.toml").slurm.time == minutes, text


@pytest.mark.parametrize(
    ("launcher", "message"),
    [
        ('kind = "pbs"', "kind must be one of local, slurm"),
        ("partitions = 'gpu'", r"unknown \[launcher\] key\(s\) partitions"),
        ("nodes = 0", "nodes must be an integer >= 1"),
        ("gpus_per_node = -1", "gpus_per_node must be an integer >= 0"),
        ("cpus_per_task = 2.5", "cpus_per_task must be an integer >= 1"),
        ('time = "soon"', "time must be minutes"),
        ("time = 0", "time must be minutes"),
        ("partition = 3", "partition must be a non-empty string"),
        ('sbatch = ["exclusive"]', 'sbatch entries are long options such as "--exclusive"'),
        ("setup = [1]", "setup must be a list of strings"),
    ],
)
def test_launcher_table_mistakes_name_the_fix(tmp_path, launcher, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(sweep_file(tmp_path, launcher))


def test_processes_that_do_not_fit_the_nodes_are_refused_before_anything_is_submitted(tmp_path):
    spec = load_sweep(sweep_file(tmp_path, "nodes = 3", axes='"train.nproc" = [8]'))
    with pytest.raises(ValueError, match="cannot be spread over 3 nodes"):
        submit_sweep(spec)
    spec = load_sweep(sweep_file(tmp_path, "gpus_per_node = 4", axes='"train.nproc" = [8]'))
    with pytest.raises(ValueError, match="set \\[launcher\\] gpus_per_node to train.nproc"):
        submit_sweep(spec)
    assert not (tmp_path / "runs").exists()


def test_submitting_without_a_slurm_client_says_where_to_run(tmp_path):
    sweep = sweep_file(tmp_path, 'kind = "slurm"')
    python_dir = str(Path(sys.executable).parent)
    completed = subprocess.run(
        [sys.executable, "-m", "hyperp", "sweep", str(sweep)],
        env=subprocess_env(PATH=f"{python_dir}:/nonexistent"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip() in (
        # submitit missing, or the SLURM commands
        "hyperp sweep: error: the slurm launcher needs submitit: pip install 'hyperp[slurm]'",
        "hyperp sweep: error: sbatch not found: submit SLURM sweeps from a machine with the "
        "SLURM client (a login node), or use --launcher local",
    )
    assert "Traceback" not in completed.stderr


def test_the_ladder_example_in_the_cluster_docs_plans_every_run(tmp_path):
    pytest.importorskip("hyperp.train.config")
    text = DOCS.read_text()
    (block,) = re.findall(r"```toml\n(# sweeps/ladder.toml\n.*?)```", text, re.S)
    # A small real corpus stands in for the shared one (the plan takes its vocabulary).
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = prepare([stdlib / "textwrap.py"], tmp_path / "corpus", vocab_size=300)
    block = block.replace("/shared/data/fineweb10B", str(corpus))
    (tmp_path / "ladder.toml").write_text(block.replace("/shared/runs/ladder", "runs/ladder"))
    dry_run = ["sweep", str(tmp_path / "ladder.toml"), "--dry-run", "--json"]
    completed = subprocess.run(
        [sys.executable, "-m", "hyperp", *dry_run],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = json.loads(completed.stdout)["runs"]
    assert len(rows) == 15 and {row["nproc"] for row in rows} == {32}
    at_base = {
        row["overrides"]["model.depth"]: row["plan"]["lr"]
        for row in rows
        if row["overrides"]["optim.base_lr"] == 0.016
    }
    assert at_base[8] == pytest.approx(0.016, rel=1e-3)  # d8 is the base (up to its token count)
    assert [at_base[d] for d in (8, 12, 16, 20, 24)] == sorted(at_base.values(), reverse=True)
    spec = load_sweep(tmp_path / "ladder.toml")
    assert spec.launcher == "slurm" and spec.slurm.nodes * spec.slurm.gpus_per_node == 32
    assert os.fspath(spec.out).endswith("runs/ladder")


def test_the_command_inside_an_allocation(tmp_path):
    base = tmp_path / "base.toml"
    run = RunSpec("r", tmp_path / "r", {"train.nproc": 16}, {}, nproc=16)
    many = allocation_command(run, base, nodes=2, first_node="gpu-017", job_id="81234")
    assert many[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert many[3:8] == [
        "--nproc-per-node=8",
        "--nnodes=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-017:29634",  # 29400 + 81234 mod 1000
        "--rdzv-id=81234",
    ]
    assert many[8:11] == ["-m", "hyperp", "train"]
    assert many[11:] == ["--config", str(base), "--out", str(run.directory), "--train.nproc", "16"]
    one_node = allocation_command(run, base, nodes=1, first_node="gpu-017", job_id="81234")
    assert one_node[3:5] == ["--nproc-per-node=16", "--standalone"]
    single = RunSpec("s", tmp_path / "s", {}, {}, nproc=1)
    assert allocation_command(single, base, nodes=1, first_node="x", job_id="1")[:4] == [
        sys.executable, "-m", "hyperp", "train",
    ]  # fmt: skip
