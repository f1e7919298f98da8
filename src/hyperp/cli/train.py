"""``hyperp train``: one training run into a run directory (see hyperp.train.trainer)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

from hyperp.cli import UserError, add_verb


def register(sub) -> None:
    parser = add_verb(
        sub,
        "train",
        help="train a model (HyperP, Muon or AdamW) into a resumable run directory",
        example="hyperp train --config tiny --train.steps 300 --optim.base_lr 0.02",
        description=(
            "Train one run. The config is a TOML file or a preset name from configs/ (smoke,\n"
            "tiny, d8_dense, d8_moe); any field can be overridden with --SECTION.KEY VALUE, e.g.\n"
            "--model.width 256 --optim.method muon --train.tokens 2e8. With no data.path the\n"
            "built-in corpus (this Python's standard library sources) is prepared once and\n"
            "cached. Runs resume automatically from their last checkpoint; Ctrl-C saves one.\n"
            "Distributed: torchrun --nproc-per-node N -m hyperp train ... (train.distributed\n"
            "ddp, fsdp or hsdp), or srun -n N hyperp train ... under SLURM."
        ),
    )
    parser.add_argument(
        "--config", "-c", default="tiny", help="TOML file or preset name (default: tiny)"
    )
    parser.add_argument(
        "--out", "-o", help="run directory (default: runs/<config>-<hash of settings>)"
    )
    parser.add_argument(
        "--resume",
        choices=("auto", "must", "never"),
        default="auto",
        help="auto: continue from the last checkpoint if any (default); must: "
        "require one; never: refuse a directory that holds a run",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="STEP",
        help="checkpoint and exit after this step; rerun to continue",
    )
    parser.add_argument(
        "--keep-step",
        type=int,
        action="append",
        default=[],
        metavar="STEP",
        help="never prune the checkpoint of this step (repeatable)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and plan (LR, tokens, steps, FLOPs); train nothing",
    )
    parser.add_argument("--json", action="store_true", help="with --dry-run: print JSON")
    parser.set_defaults(func=run, accepts_overrides=True)


def default_out_dir(config_name: str, config_dict: dict) -> Path:
    """``runs/<config>-<8 hex>``: the same settings always map to the same directory."""
    digest = hashlib.sha256(json.dumps(config_dict, sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / f"{Path(config_name).stem}-{digest}"


def run(args: argparse.Namespace) -> int:
    from hyperp.data import data_vocab_size
    from hyperp.train import load_config
    from hyperp.train.trainer import TrainingDiverged, train

    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be a step number of at least 1, got {args.stop_after}")
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        # The plan the real start prints: the vocabulary comes from the data, as there.
        resolved = config.resolve(data_vocab_size(config))
        plan = resolved.plan()
        if args.json:
            print(json.dumps({"config": resolved.to_dict(), "plan": plan.to_dict()}, indent=2))
        else:
            for line in plan.explanation:
                print(line)
            print(f"FLOPs: {plan.flops:.4g} ({plan.flops_per_token:.4g} per token)")
        return 0

    out = Path(args.out) if args.out else default_out_dir(args.config, config.trajectory_dict())
    from hyperp.sweep.processes import TIED_TO_PARENT, die_with_parent

    if os.environ.get(TIED_TO_PARENT):  # started by a sweep: end with it (torchrun's ranks too)
        die_with_parent()
    try:
        result = train(
            config,
            out,
            resume=args.resume,
            stop_after=args.stop_after,
            keep_steps=tuple(args.keep_step),
        )
    except TrainingDiverged as error:
        raise UserError(str(error)) from None
    return result.exit_code
