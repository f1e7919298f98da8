"""Every ``hyperp`` command in the fenced shell blocks of README.md and docs/*.md: each one parses
(verb, options, config overrides), and those that need no cluster, network or hours run, in
document order, in a sandbox holding the files they name, with the training shrunk to a tiny
model (the overrides in SHRINK are appended, so they win)."""

from __future__ import annotations

import gzip
import json
import re
import shlex
import shutil
import sysconfig
from pathlib import Path

import pytest

from hyperp.cli import build_parser, main
from hyperp.train import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Appended to every `hyperp train` the docs show: a tiny model on a 200 KB built-in corpus.
SHRINK = [
    "--model.depth=1", "--model.width=32", "--model.head_dim=16", "--model.n_kv_heads=2",
    "--model.context=32", "--train.seq_len=32", "--train.batch_size=4", "--train.steps=2",
    "--train.eval_batches=1", "--train.progress=false", "--train.threads=1",
    "--data.max_bytes=200000", "--data.vocab_size=512",
]  # fmt: skip

# Commands that only parse here, and why (matched against the command's text).
PARSE_ONLY = {
    "/shared": "a cluster's shared paths",
    "fineweb10B": "the FineWeb shards of a real run",
    "--launcher slurm": "a SLURM cluster (tests/test_slurm.py)",
    "sweeps/ladder.toml": "the cluster ladder (its data lives on /shared)",
    "--tasks": "lm-eval tasks from the hub (tests/test_eval.py runs a local one)",
    "reproduce": "hours of runs (tests/test_reproduce.py covers the machinery)",
    "wandb_export.csv": "a user's W&B export",
    "runs/lr-width": "the results of the 15-run lr-width sweep",
    "runs/tokens": "the results of a token sweep",
    "--step 200": "a checkpoint at step 200",
    "sweep sweeps/lr-width.toml": "15 trainings of 200 steps (its --dry-run, status and cancel run)",
    "llama.toml": "a Hugging Face model's run (tests/test_hf_train.py trains and dry-runs one)",
}
RUNNABLE_SWEEP = ("--dry-run", "status", "cancel")


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after ``hyperp``) for every hyperp command in bash or plain code blocks,
    continuation lines joined, comments dropped, ``a && b`` split, torchrun/srun prefixes cut."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for language, block in re.findall(r"```(\w*)\n(.*?)```", text, re.DOTALL):
            if language not in ("bash", "sh", ""):
                continue
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    for index, word in enumerate(words):
                        option_value = index > 0 and words[index - 1].startswith("--")
                        if (word == "hyperp" or word.endswith("/hyperp")) and not option_value:
                            found.append((path.name, words[index + 1 :]))
                            break
    return found


COMMANDS = documented_commands()


def command_id(item) -> str:
    where, argv = item
    return f"{where}: hyperp {' '.join(argv)}"[:90]


def test_the_docs_show_the_commands_this_test_knows():
    verbs = {argv[0] for _, argv in COMMANDS}
    assert {"train", "prepare", "sweep", "fit", "generate", "eval", "export", "plot"} <= verbs
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("item", COMMANDS, ids=command_id)
def test_every_documented_command_parses(item):
    _, argv = item
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # exits on an unknown verb or option
    assert not extra or getattr(args, "accepts_overrides", False), extra
    if argv[0] == "train":
        config = args.config
        if config.endswith(".toml") and not (ROOT / config).is_file():
            config = "tiny"  # a user's own file (my.toml): its overrides still have to exist
        load_config(config, extra)
    for word in argv:
        if word.startswith("sweeps/"):
            assert (ROOT / word).is_file(), f"{word} is named by the docs but not shipped"


def sandbox(root: Path) -> None:
    """The files the documented commands name, small: text, JSONL, a prompt, a config."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (root / "notes").mkdir()
    (root / "books").mkdir()
    for name in ("textwrap", "shlex"):
        shutil.copyfile(stdlib / f"{name}.py", root / "notes" / f"{name}.txt")
    shutil.copyfile(stdlib / "difflib.py", root / "books" / "difflib.txt")
    shutil.copyfile(stdlib / "argparse.py", root / "more.txt")
    with gzip.open(root / "dump.jsonl.gz", "wt") as handle:
        for name in ("textwrap", "shlex", "difflib"):
            handle.write(json.dumps({"content": (stdlib / f"{name}.py").read_text()}) + "\n")
    (root / "prompt.txt").write_text("def main(")
    shutil.copyfile(ROOT / "src/hyperp/configs/tiny.toml", root / "my.toml")
    shutil.copytree(ROOT / "sweeps", root / "sweeps")
    (root / "configs").symlink_to(ROOT / "src/hyperp/configs")


def test_documented_commands_run_at_tiny_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYPERP_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    base.mkdir()
    monkeypatch.chdir(base)
    sandbox(base)
    # The user's own corpus and trained run that the docs' examples refer to.
    assert main(["prepare", "notes/", "--out", "data/mycorpus", "--vocab-size", "400"]) == 0
    run = ["train", "--out", "runs/tiny-1a2b3c", "--data.path", "data/mycorpus", *SHRINK]
    assert main(run) == 0
    shutil.copytree("runs/tiny-1a2b3c", "runs/lr-sweep/a")
    ran, skipped = [], []
    for where, argv in COMMANDS:
        if Path.cwd().name != where:  # each document starts from the same files
            shutil.copytree(base, tmp_path / where, symlinks=True, dirs_exist_ok=True)
            monkeypatch.chdir(tmp_path / where)
        text = " ".join(argv)
        reason = next((why for key, why in PARSE_ONLY.items() if key in text), None)
        if argv[0] == "sweep" and any(word in argv for word in RUNNABLE_SWEEP):
            reason = None if "ladder" not in text else reason
        if reason:
            skipped.append(f"{where}: hyperp {text}  ({reason})")
            continue
        extra = SHRINK if argv[0] == "train" else []
        if argv[0] == "train" and "--out" not in argv:
            extra = [*extra, "--out", f"runs/docs-{len(ran)}"]
        if argv[0] == "generate":
            extra = ["--max-new-tokens", "5"]
        code = main([*argv, *extra])
        output = capsys.readouterr()
        assert code == 0, f"{where}: hyperp {text}\n{output.out[-2000:]}\n{output.err[-2000:]}"
        ran.append(f"{where}: hyperp {text}")
    print("\nran:\n  " + "\n  ".join(ran) + "\nparsed only:\n  " + "\n  ".join(skipped))
    assert len(ran) >= 20
