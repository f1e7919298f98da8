"""The training loop: one CPU, or many processes under torchrun (DDP or FSDP2).

A run directory is the contract with everything downstream (DESIGN.md):

- ``config.json``: the resolved config and the plan (LR, tokens, steps) it implies;
- ``metrics.jsonl``: one record per logged step (train loss, LR, grad norm, tokens/s, MFU,
  stability indicators on monitor steps, validation loss on eval steps);
- ``checkpoints/step_XXXXXXXX.pt``: the last ``train.keep_checkpoints`` checkpoints;
- ``summary.json``: written atomically when the run finishes (``error.txt`` if it fails).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hyperp import monitor
from hyperp.data import TrainLoader, default_corpus, open_corpus, validation_batches
from hyperp.fileio import atomic_write_json, atomic_write_text
from hyperp.model import Transformer
from hyperp.optim import build_optimizer
from hyperp.optim.roles import assign_roles
from hyperp.rules import lr_schedule
from hyperp.train.checkpoint import (
    full_model_state,
    list_checkpoints,
    load_latest_checkpoint,
    load_model_state,
    save_checkpoint,
)
from hyperp.train.config import NON_TRAJECTORY_KEYS, RunConfig, RunPlan
from hyperp.train.distributed import Distributed, setup_distributed
from hyperp.train.sinks import open_sinks

__all__ = ["RunResult", "TrainingDiverged", "train"]

# Dense bf16 peak FLOP/s for MFU, by CUDA device name.
_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops without touching its last checkpoint."""


@dataclass
class RunResult:
    status: str  # "finished", "interrupted", "already finished"
    out_dir: Path
    summary: dict[str, Any] | None
    exit_code: int


class _StopFlag:
    """Ctrl-C / SIGTERM: finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 by default on CUDA; fp32 (no autocast) on CPU unless asked."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if name == "bf16" else None


def _ns_dtype(name: str) -> torch.dtype | None:
    return {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[name]


def _peak_flops(config: RunConfig, device: torch.device) -> float:
    if config.train.peak_flops:
        return config.train.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _PEAK_FLOPS.items():
            if key in name:
                return value
    return 0.0


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    differences = []
    for section, table in current.items():
        for key, value in table.items():
            before = saved.get(section, {}).get(key, value)
            if before != value and (section, key) not in NON_TRAJECTORY_KEYS:
                differences.append(f"{section}.{key}: {before!r} -> {value!r}")
    return differences


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        dist: Distributed,
        resume: str,
        stop_after: int | None = None,
    ) -> None:
        self.stop_after = stop_after
        self.config = config
        self.out_dir = out_dir
        self.dist = dist
        self.resume = resume
        self.checkpoint_dir = out_dir / "checkpoints"
        self.log = print if dist.is_main else (lambda *a, **k: None)

    # -- set-up -------------------------------------------------------------------------------

    def _open_data(self):
        data = self.config.data
        if data.path:
            corpus = open_corpus(data.path)
        else:
            # Rank 0 prepares the built-in corpus once; the others wait, then open the cache.
            if self.dist.is_main:
                default_corpus(
                    vocab_size=data.vocab_size, max_bytes=data.max_bytes or None, log=self.log
                )
            self.dist.barrier()
            corpus = open_corpus(
                default_corpus(vocab_size=data.vocab_size, max_bytes=data.max_bytes or None)
            )
        return corpus

    def _build_model(self) -> nn.Module:
        torch.manual_seed(self.config.train.seed)  # identical initial weights on every rank
        model = Transformer(self.config.model).to(self.dist.device)
        return model

    def _wrap(self, model: nn.Module) -> nn.Module:
        train = self.config.train
        if self.dist.enabled and train.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
            wrapped = model
        elif self.dist.enabled:
            device_ids = [self.dist.device] if self.dist.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        else:
            wrapped = model
        if train.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> RunResult:
        config, train, dist = self.config, self.config.train, self.dist
        summary_path = self.out_dir / "summary.json"
        if summary_path.exists() and self.resume != "never":
            self.log(f"{self.out_dir} already holds a finished run (summary.json); nothing to do")
            return RunResult("already finished", self.out_dir, None, 0)
        if train.threads:
            torch.set_num_threads(train.threads)
        corpus = self._open_data()
        if config.model.vocab_size != corpus.vocab_size:
            self.log(f"model.vocab_size set to the corpus vocabulary: {corpus.vocab_size}")
            config.model.vocab_size = corpus.vocab_size
        checkpoint = self._resume_point()
        if train.seq_len > config.model.context:
            raise ValueError(
                f"train.seq_len {train.seq_len} exceeds model.context "
                f"{config.model.context}; raise model.context or shorten seq_len"
            )
        local_batch, remainder = divmod(train.batch_size, dist.world_size * train.grad_accum)
        if remainder or local_batch == 0:
            raise ValueError(
                f"train.batch_size {train.batch_size} must be a multiple of processes x "
                f"grad_accum = {dist.world_size} x {train.grad_accum}"
            )
        plan = config.plan()
        if dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(
                self.out_dir / "config.json", {**config.to_dict(), "plan": plan.to_dict()}
            )
            for line in plan.explanation:
                self.log(line)

        model = self._build_model()
        roles = {info.name: info.role for info in assign_roles(model)}  # before sharding drops tags
        wrapped = self._wrap(model)
        optimizer = build_optimizer(
            model,
            config.optim.method,
            plan.lr,
            weight_decay=config.optim.weight_decay,
            depth_ratio=plan.depth_ratio,
            width_ratio=plan.width_ratio,
            momentum=config.optim.momentum,
            betas=(config.optim.beta1, config.optim.beta2),
            eps=config.optim.eps,
            sphere=config.optim.sphere,
            ns_dtype=_ns_dtype(config.optim.ns_dtype),
            roles=roles,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: lr_schedule(
                step,
                plan.steps,
                warmup_steps=config.optim.warmup_steps,
                final_fraction=config.optim.final_lr_fraction,
            ),
        )
        loader = TrainLoader(
            corpus.train,
            batch_size=train.batch_size,
            context=train.seq_len,
            seed=train.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            device=dist.device,
        )
        start_step, counters = 0, {"wall_time_s": 0.0}
        if checkpoint is not None:
            payload, path = checkpoint
            load_model_state(model, payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            loader.load_state_dict(payload["loader"])
            _set_rng_state(payload["rng"])
            start_step, counters = payload["step"], payload["counters"]
            self.log(f"resumed from {path} at step {start_step}")
        elif dist.is_main and train.progress:
            self.log(optimizer.describe())

        sinks = None
        if dist.is_main:
            sinks = open_sinks(
                self.out_dir,
                resume_step=start_step if checkpoint else None,
                tensorboard=train.tensorboard,
                wandb=train.wandb,
                wandb_project=train.wandb_project,
                name=self.out_dir.name,
                config=config.to_dict(),
            )
        try:
            with _StopFlag() as stop:
                return self._loop(
                    model,
                    wrapped,
                    optimizer,
                    scheduler,
                    loader,
                    corpus,
                    plan,
                    start_step,
                    counters,
                    sinks,
                    stop,
                )
        finally:
            if sinks is not None:
                sinks.close()

    def _resume_point(self):
        checkpoints = list_checkpoints(self.checkpoint_dir)
        if self.resume == "never":
            if checkpoints or (self.out_dir / "metrics.jsonl").exists():
                raise ValueError(
                    f"{self.out_dir} already holds a run; pass --resume auto to continue it, or "
                    "choose another --out (nothing is overwritten)"
                )
            return None
        if not checkpoints:
            if self.resume == "must":
                raise FileNotFoundError(f"no checkpoint to resume in {self.checkpoint_dir}")
            if (self.out_dir / "metrics.jsonl").exists() and self.dist.is_main:
                self.log(f"{self.out_dir} has metrics but no checkpoint: starting over")
            return None
        found = load_latest_checkpoint(self.checkpoint_dir)
        if found is None:
            raise ValueError(f"no readable checkpoint in {self.checkpoint_dir}; see the warnings")
        differences = _config_differences(found[0]["config"], self.config.to_dict())
        if differences:
            raise ValueError(
                f"{self.out_dir} holds a run with a different config ({'; '.join(differences)}); "
                "resume it with the same settings, or choose another --out"
            )
        return found

    def _evaluate(self, wrapped: nn.Module, corpus, autocast) -> float:
        """Mean validation loss per token; identical for any number of processes."""
        train, dist = self.config.train, self.dist
        batches = list(
            validation_batches(
                corpus.val,
                batch_size=train.batch_size,
                context=train.seq_len,
                max_batches=train.eval_batches,
                rank=dist.rank,
                world_size=dist.world_size,
                device=dist.device,
            )
        )
        total_batches = int(dist.sum([len(batches)])[0])
        rounds = math.ceil(total_batches / dist.world_size) if dist.enabled else len(batches)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
        count = 0
        wrapped.eval()
        with torch.no_grad():
            for index in range(rounds):
                # Sharded models need every rank in every forward: a rank without a batch runs
                # its first one again and ignores the result.
                real = index < len(batches)
                inputs, targets = batches[index] if real else batches[0]
                with autocast():
                    logits = wrapped(inputs).logits
                if real:
                    loss = nn.functional.cross_entropy(
                        logits.float().flatten(0, 1), targets.flatten(), reduction="sum"
                    )
                    loss_sum += loss.double()
                    count += targets.numel()
        wrapped.train()
        total, tokens = dist.sum([loss_sum.item(), float(count)])
        return total / tokens

    def _loop(
        self,
        model,
        wrapped,
        optimizer,
        scheduler,
        loader,
        corpus,
        plan: RunPlan,
        start_step,
        counters,
        sinks,
        stop,
    ) -> RunResult:
        config, train, dist = self.config, self.config.train, self.dist
        dtype = _precision(train.precision, dist.device)
        device_type = dist.device.type

        def autocast():
            if dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device_type, dtype=dtype)

        peak_flops = _peak_flops(config, dist.device)
        grad_params = [p for p in model.parameters() if p.requires_grad]
        recent = collections.deque(maxlen=20)
        last_val = counters.get("val_loss")
        interval_start, interval_tokens = time.perf_counter(), 0
        run_start = time.perf_counter() - counters["wall_time_s"]
        progress = None
        if dist.is_main and train.progress:
            from tqdm import tqdm

            progress = tqdm(
                total=plan.steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                disable=None,
                file=sys.stderr,
            )
        step = start_step
        while step < plan.steps:
            step += 1
            inputs, targets = next(loader)
            watch = train.monitor_every and (step % train.monitor_every == 0 or step == 1)
            collector = monitor.collect(model) if watch else contextlib.nullcontext()
            lm_sum = aux_sum = 0.0
            with collector as stats:
                micro = list(zip(inputs.chunk(train.grad_accum), targets.chunk(train.grad_accum)))
                for index, (x, y) in enumerate(micro):
                    last = index == len(micro) - 1
                    no_sync = getattr(wrapped, "no_sync", None)
                    sync = no_sync() if (no_sync and not last) else contextlib.nullcontext()
                    with sync:
                        with autocast():
                            out = wrapped(x, y)
                        (out.loss / train.grad_accum).backward()
                    lm_sum += out.lm_loss.detach().float() / train.grad_accum
                    aux_sum += out.aux_loss.detach().float() / train.grad_accum
            lm_loss, aux_loss = dist.sum([float(lm_sum), float(aux_sum)])
            lm_loss, aux_loss = lm_loss / dist.world_size, aux_loss / dist.world_size
            if not math.isfinite(lm_loss + aux_loss):
                saved = list_checkpoints(self.checkpoint_dir)
                where = f"step {saved[-1][0]} ({saved[-1][1]})" if saved else "none saved yet"
                raise TrainingDiverged(
                    f"the loss became {lm_loss + aux_loss} at step {step}; the run stopped before "
                    f"updating the weights. Last good checkpoint: {where}. Lower the learning "
                    "rate (optim.base_lr or optim.lr) or check the data, then start a new run."
                )
            clip = config.optim.grad_clip or math.inf  # 0 disables clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(grad_params, clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            lr_now = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()

            step_tokens = plan.batch_tokens
            interval_tokens += step_tokens
            recent.append(lm_loss)
            record = None
            if step % train.log_every == 0 or step == 1 or step == plan.steps or watch:
                now = time.perf_counter()
                tokens_per_s = interval_tokens / max(now - interval_start, 1e-9)
                interval_start, interval_tokens = now, 0
                record = {
                    "step": step,
                    "tokens": step * plan.batch_tokens,
                    "loss": lm_loss + aux_loss,
                    "lm_loss": lm_loss,
                    "aux_loss": aux_loss,
                    "lr": lr_now,
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tokens_per_s,
                    "elapsed_s": now - run_start,
                }
                if peak_flops:
                    record["mfu"] = (
                        plan.flops_per_token * tokens_per_s / (peak_flops * dist.world_size)
                    )
                if watch and stats is not None:
                    record.update(stats.summary())
            evaluate = (train.eval_every and step % train.eval_every == 0) or step == plan.steps
            if evaluate and train.eval_batches:
                last_val = self._evaluate(wrapped, corpus, autocast)
                record = record or {"step": step, "tokens": step * plan.batch_tokens}
                record["val_loss"] = last_val
            if record is not None and sinks is not None:
                sinks.write(record)
            if progress is not None:
                progress.update(1)
                if record is not None:
                    shown = {"loss": f"{lm_loss:.3f}"}
                    if "tokens_per_s" in record:
                        shown["tok/s"] = f"{record['tokens_per_s']:.3g}"
                    if last_val is not None:
                        shown["val"] = f"{last_val:.3f}"
                    progress.set_postfix(shown, refresh=False)
            interrupted = dist.any(stop.signal is not None) or step == self.stop_after
            counters = {
                "wall_time_s": time.perf_counter() - run_start,
                "val_loss": last_val,
                "train_loss": sum(recent) / len(recent),
            }
            due = train.checkpoint_every and step % train.checkpoint_every == 0
            if due or interrupted or step == plan.steps:
                self._save(step, model, optimizer, scheduler, loader, counters)
            if interrupted and step < plan.steps:
                if progress is not None:
                    progress.close()
                self.log(
                    f"\nstopped at step {step}/{plan.steps}; checkpoint saved in "
                    f"{self.checkpoint_dir}. Continue with the same command (--resume auto)."
                )
                return RunResult("interrupted", self.out_dir, None, 130 if stop.signal else 0)
        if progress is not None:
            progress.close()
        summary = self._summary(plan, counters, model)
        if dist.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
            val = summary["val_loss"]
            self.log(
                f"finished: train loss {summary['train_loss']:.4f}, val loss "
                f"{'-' if val is None else format(val, '.4f')}, "
                f"{summary['tokens_per_s']:.0f} tokens/s; {self.out_dir / 'summary.json'}"
            )
        return RunResult("finished", self.out_dir, summary, 0)

    def _save(self, step, model, optimizer, scheduler, loader, counters) -> None:
        state = full_model_state(model)  # a collective under FSDP: every rank takes part
        if self.dist.is_main:
            save_checkpoint(
                self.checkpoint_dir,
                step,
                {
                    "step": step,
                    "model": state,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loader": loader.state_dict(),
                    "rng": _rng_state(),
                    "counters": counters,
                    "config": self.config.to_dict(),
                },
                keep=self.config.train.keep_checkpoints,
            )
        self.dist.barrier()

    def _summary(self, plan: RunPlan, counters, model) -> dict[str, Any]:
        config = self.config
        wall = counters["wall_time_s"]
        return {
            "name": self.out_dir.name,
            "status": "finished",
            "method": config.optim.method,
            "lr": plan.lr,
            "base_lr": config.optim.base_lr if config.optim.lr is None else None,
            "final_lr": plan.final_lr,
            "train_loss": counters["train_loss"],
            "val_loss": counters["val_loss"],
            "tokens": plan.tokens,
            "flops": plan.flops,
            "params": plan.params,
            "params_total": sum(p.numel() for p in model.parameters()),
            "depth": config.model.depth,
            "width": config.model.width,
            "batch_tokens": plan.batch_tokens,
            "seq_len": config.train.seq_len,
            "seed": config.train.seed,
            "steps": plan.steps,
            "processes": self.dist.world_size,
            "wall_time_s": wall,
            "tokens_per_s": plan.tokens / wall if wall > 0 else None,
            "config": config.to_dict(),
        }


def train(
    config: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str = "auto",
    stop_after: int | None = None,
) -> RunResult:
    """Train one run into ``out_dir`` (see the module docstring); returns how it ended.

    ``resume``: ``"auto"`` continues from the newest checkpoint when there is one, ``"must"``
    requires one, ``"never"`` refuses a directory that already holds a run. ``stop_after``
    checkpoints and returns after that many steps (of the whole run), as Ctrl-C would; calling
    again continues, so a long run can be cut into time-limited jobs.
    """
    if resume not in ("auto", "must", "never"):
        raise ValueError(f"resume must be auto, must or never; got {resume!r}")
    dist = setup_distributed(config.train.device)
    out = Path(out_dir)
    try:
        result = Trainer(config, out, dist, resume, stop_after).run()
        dist.barrier()  # no rank tears down its connections while another still talks
        return result
    except Exception as error:
        # A failed run leaves its reason beside its files (sweeps report it); no summary.json.
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "error.txt", "".join(traceback.format_exception(error)))
        raise
    finally:
        dist.close()
