"""The training loop: one CPU, or many processes under torchrun or srun (DDP, FSDP2, HSDP).

A run directory is the contract with everything downstream (DESIGN.md):

- ``config.json``: the resolved config (vocabulary from the data, the method's logit multiplier)
  and the plan (LR, tokens, steps) it implies;
- ``metrics.jsonl``: one record per logged step (train loss, LR, grad norm, tokens/s, MFU,
  stability indicators on monitor steps, validation loss on eval steps);
- ``train.log``: what a person reads: the plan, a line every ``train.log_every`` steps, the end;
- ``tokenizer.json``: the data's tokenizer, so that the run can be used without its corpus;
- ``checkpoints/step_XXXXXXXX/``: the last ``train.keep_checkpoints`` distributed checkpoints
  (:mod:`hyperp.train.checkpoint`);
- ``summary.json``: written atomically when the run finishes (``error.txt`` if it fails);
- ``trainer.lock``: held while a trainer runs (:mod:`hyperp.train.rundir`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from hyperp import monitor
from hyperp.data import Corpus, TrainLoader, run_corpus, validation_batches
from hyperp.fileio import atomic_write_json, atomic_write_text
from hyperp.hf import CausalLM, build_hf_model
from hyperp.model import Transformer
from hyperp.model.transformer import checkpoint_blocks
from hyperp.optim import GroupedOptimizer, build_optimizer
from hyperp.optim.roles import role_map
from hyperp.rules import lr_schedule
from hyperp.train.checkpoint import Checkpointer, CheckpointError, list_checkpoints, root_cause
from hyperp.train.config import NON_TRAJECTORY_KEYS, RunConfig, RunPlan
from hyperp.train.distributed import Distributed, parallelize, setup_distributed
from hyperp.train.initial import check_initial_weights, load_initial_weights
from hyperp.train.rundir import RunLock
from hyperp.train.sinks import RunLog, Sinks, open_sinks
from hyperp.train.state import ModelState, OptimizerState, RNGState, RunCounters

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
    """Ctrl-C / SIGTERM: finish the current step, checkpoint, exit cleanly. A second Ctrl-C
    stops at once; a repeated SIGTERM does not (schedulers may deliver it to every process of
    a job, some twice)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = self.signal or signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _precision(
    name: str, device: torch.device, cpu_auto: torch.dtype | None = None
) -> torch.dtype | None:
    """Autocast dtype: bf16 by default on CUDA; on a CPU, ``cpu_auto`` (bf16 where this CPU
    measured it faster, see :mod:`hyperp.optim.precision`; else fp32, no autocast)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else cpu_auto
    return torch.bfloat16 if name == "bf16" else None


def _peak_flops(config: RunConfig, device: torch.device) -> float:
    if config.train.peak_flops:
        return config.train.peak_flops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in _PEAK_FLOPS.items():
            if key in name:
                return value
    return 0.0


def _corpus_summary(corpus: Corpus) -> dict[str, Any]:
    splits = corpus.meta.get("splits", {})
    return {
        "path": str(corpus.path),
        "format": corpus.format,
        "train_tokens": len(corpus.train),
        "val_tokens": len(corpus.val),
        "train_documents": splits.get("train", {}).get("documents"),
        "val_documents": splits.get("val", {}).get("documents"),
        "description": corpus.meta.get("description") or corpus.meta.get("command") or "",
    }


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    differences = []
    for section, table in current.items():
        for key, value in table.items():
            before = saved.get(section, {}).get(key, value)
            if before != value and (section, key) not in NON_TRAJECTORY_KEYS:
                differences.append(f"{section}.{key}: {before!r} -> {value!r}")
    return differences


@dataclass
class _Run:
    """Everything one training run uses, built once by :meth:`Trainer._build`."""

    config: RunConfig
    plan: RunPlan
    corpus: Corpus
    model: nn.Module  # the Transformer (holding FSDP2 shards under fsdp/hsdp)
    module: nn.Module  # what the step calls: the model, its DDP wrapper, or compiled
    optimizer: GroupedOptimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: TrainLoader
    counters: RunCounters
    checkpointer: Checkpointer
    log: RunLog
    sinks: Sinks | None
    autocast: Callable[[], contextlib.AbstractContextManager]
    peak_flops: float

    def close(self) -> None:
        self.checkpointer.close()
        self.log.close()
        if self.sinks is not None:
            self.sinks.close()


@dataclass
class _Step:
    """What one optimizer step measured (losses averaged over ranks)."""

    lm_loss: float
    aux_loss: float
    grad_norm: float
    lr: float
    indicators: dict[str, float] | None
    stop_requested: bool  # some rank got SIGTERM/SIGINT (agreed in the loss all-reduce)


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        out_dir: Path,
        dist: Distributed,
        resume: str,
        stop_after: int | None = None,
        keep_steps: tuple[int, ...] = (),
    ) -> None:
        self.config = config
        self.keep_steps = keep_steps
        self.out_dir = out_dir
        self.dist = dist
        self.resume = resume
        self.stop_after = stop_after
        self.checkpoint_dir = out_dir / "checkpoints"
        self._init_from = ""  # train.init_from on a fresh start (set by _resolve)
        self.say = print if dist.is_main else (lambda *a, **k: None)
        self.claimed = False

    # -- set-up -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        if (self.out_dir / "summary.json").exists() and self.resume != "never":
            self.say(f"{self.out_dir} already holds a finished run (summary.json); nothing to do")
            return RunResult("already finished", self.out_dir, None, 0)
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        config = self._resolve()  # a mistake in the config or the data stops here: no file yet
        plan = config.plan()
        lock = RunLock(self.out_dir, self.dist)
        lock.acquire(log=self.say)
        self.claimed = True  # from here on, a failure is recorded in the run directory
        try:
            run = self._build(config, plan)
            try:
                start = self._restore(run)
                with _StopFlag() as stop:
                    return self._loop(run, start, stop)
            finally:
                run.close()
        finally:
            lock.release()

    def _resolve(self) -> RunConfig:
        """The resolved config, after checking the batch split and the directory's history."""
        if self.dist.is_main:
            corpus = run_corpus(self.config, prepare=True, log=self.say)
        self.dist.barrier()  # rank 0 prepared the built-in corpus; the others now open it
        if not self.dist.is_main:
            corpus = run_corpus(self.config, prepare=True)
        self._corpus = corpus
        checkpoints = list_checkpoints(self.checkpoint_dir)
        self._resuming = resuming = self.resume != "never" and bool(checkpoints)
        config = self.config.resolve(corpus.vocab_size, self._saved_hf_config(resuming))
        train, world = config.train, self.dist.world_size
        if train.seq_len > config.model.context:
            raise ValueError(
                f"train.seq_len {train.seq_len} exceeds model.context {config.model.context}; "
                "raise model.context or shorten seq_len"
            )
        if train.batch_size % (world * train.grad_accum):
            raise ValueError(
                f"train.batch_size {train.batch_size} must be a multiple of processes x "
                f"grad_accum = {world} x {train.grad_accum}"
            )
        # A resume takes its weights from the checkpoint: init_from is read only on a fresh start
        # (the file may be gone by then), and checked before any file is written.
        self._init_from = "" if resuming else train.init_from
        if self._init_from:
            check_initial_weights(self._init_from, config.model)
        has_run = (self.out_dir / "metrics.jsonl").exists() or any(self.checkpoint_dir.glob("*"))
        if self.resume == "must" and not checkpoints:
            raise FileNotFoundError(
                f"no checkpoint to resume in {self.checkpoint_dir}; drop --resume must to start"
            )
        if self.resume == "never" and has_run:
            raise ValueError(
                f"{self.out_dir} already holds a run; pass --resume auto to continue it, or "
                "choose another --out (nothing is overwritten)"
            )
        saved = self.out_dir / "config.json"
        if has_run and saved.is_file():
            differences = _config_differences(json.loads(saved.read_text()), config.to_dict())
            if differences:
                raise ValueError(
                    f"{self.out_dir} holds a run with a different config "
                    f"({'; '.join(differences)}); resume it with the same settings, or choose "
                    "another --out"
                )
        return config

    def _saved_hf_config(self, resuming: bool) -> dict | None:
        """A resumed run's model config from ``model.hf``, as the run recorded it: files outside
        the run directory are read on a fresh start only (a ``model.hf_config`` table is the
        user's own and is compared with the recorded one like any setting)."""
        saved = self.out_dir / "config.json"
        if not (resuming and self.config.model.hf and saved.is_file()):
            return None
        return json.loads(saved.read_text()).get("model", {}).get("hf_config")

    def _ns_dtype(self, config: RunConfig) -> tuple[str, str]:
        """Newton-Schulz precision and why."""
        if config.optim.ns_dtype != "auto":
            dtype = config.optim.ns_dtype
            return dtype, f"Newton-Schulz runs in {dtype} (optim.ns_dtype)"
        if self.dist.device.type != "cpu":
            return "bf16", "Newton-Schulz runs in bf16 (the default on CUDA)"
        from hyperp.optim.precision import cpu_ns_choice

        bf16, why = self._cpu_bf16(cpu_ns_choice)
        return ("bf16" if bf16 else "fp32"), why

    def _cpu_autocast(self, config: RunConfig) -> tuple[torch.dtype | None, str]:
        """bf16 autocast for ``train.precision = "auto"`` on a CPU that runs it faster; a note
        for the log."""
        if config.train.precision != "auto" or self.dist.device.type != "cpu":
            return None, ""
        from hyperp.optim.precision import cpu_autocast_choice

        bf16, why = self._cpu_bf16(cpu_autocast_choice)
        return (torch.bfloat16 if bf16 else None), f"; {why}"

    def _cpu_bf16(self, choice: Callable[[], tuple[torch.dtype, str]]) -> tuple[bool, str]:
        """Whether a precision choice of :mod:`hyperp.optim.precision` picked bf16, and why:
        rank 0 decides (measures, or reads its cache) and tells the others, so every rank
        agrees."""
        dtype, why = choice() if self.dist.is_main else (None, "")
        bf16 = self.dist.broadcast_int(int(dtype == torch.bfloat16) if self.dist.is_main else 0)
        return bool(bf16), why

    def _build(self, config: RunConfig, plan: RunPlan) -> _Run:
        train, dist = config.train, self.dist
        torch.manual_seed(train.seed)  # identical initial weights on every rank
        model = self._model(config).to(dist.device)
        if not config.model.is_hf:
            checkpoint_blocks(model, train.activation_checkpointing)
        elif train.activation_checkpointing:
            model.checkpoint_layers()
        if self._init_from:  # before the optimizer, which takes the radii from the weights
            load_initial_weights(model, self._init_from, config.model)
        roles = role_map(model)  # before sharding, which drops what tensors carry
        shard_size = train.shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        parallel = parallelize(model, dist, train.distributed, shard_size)
        module = torch.compile(parallel.module) if train.compile else parallel.module
        ns_dtype, ns_reason = self._ns_dtype(config)
        optimizer, scheduler = _optimizer(config, plan, model, roles, parallel, ns_dtype)
        loader = TrainLoader(
            self._corpus.train,
            batch_size=train.batch_size,
            context=train.seq_len,
            seed=train.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            device=dist.device,
        )
        counters = RunCounters()
        log = RunLog(
            self.out_dir / "train.log" if dist.is_main else None,
            total_steps=plan.steps,
            start_step=0,
            progress=train.progress,
        )
        components = {
            "model": ModelState(model),
            "optimizer": OptimizerState(model, optimizer),
            "scheduler": scheduler,
            "loader": loader,
            "rng": RNGState(dist.rank),
            "counters": counters,
        }
        checkpointer = Checkpointer(
            self.checkpoint_dir,
            components,
            keep=train.keep_checkpoints,
            async_save=train.async_checkpoint,
            log=log.info,
            keep_steps=self.keep_steps,
        )
        cpu_auto, autocast_note = self._cpu_autocast(config)
        dtype, device_type = _precision(train.precision, dist.device, cpu_auto), dist.device.type

        def autocast():
            if dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device_type=device_type, dtype=dtype)

        run = _Run(
            config, plan, self._corpus, model, module, optimizer, scheduler, loader, counters,
            checkpointer, log, None, autocast, _peak_flops(config, dist.device),
        )  # fmt: skip
        self._write_run_files(run, f"{ns_reason}{autocast_note}")
        return run

    def _model(self, config: RunConfig) -> nn.Module:
        """Our Transformer, or a Hugging Face model (:class:`hyperp.hf.CausalLM`): on a fresh
        start from its ``model.hf`` directory (with the weights there, if any), on a resume from
        the recorded config (the checkpoint has the weights)."""
        model = config.model
        if not model.is_hf:
            return Transformer(model)
        fresh = model.hf and not self._resuming
        return CausalLM(build_hf_model(model.hf if fresh else model.hf_config))

    def _write_run_files(self, run: _Run, precision_note: str) -> None:
        if not self.dist.is_main:
            return
        atomic_write_json(
            self.out_dir / "config.json", {**run.config.to_dict(), "plan": run.plan.to_dict()}
        )
        tokenizer = run.corpus.tokenizer_path
        if tokenizer is not None:
            shutil.copyfile(tokenizer, self.out_dir / "tokenizer.json")
        for line in run.plan.explanation:
            run.log.info(line)
        if run.config.optim.method != "adamw":
            run.log.info(precision_note)

    def _restore(self, run: _Run) -> int:
        """Load the newest checkpoint that reads, if any; the step to continue from."""
        found = run.checkpointer.restore_newest() if self.resume != "never" else None
        if found is None:
            if self.resume == "must":
                raise FileNotFoundError(f"no checkpoint to resume in {self.checkpoint_dir}")
            if self.dist.is_main and self.config.train.progress:
                run.log.info(run.optimizer.describe())
            run.sinks = self._open_sinks(run, None)
            return 0
        step, path = found
        if run.loader.step != step:
            raise CheckpointError(f"checkpoint {path} is of step {run.loader.step}, not {step}")
        run.log.info(f"resumed from {path} at step {step}")
        run.sinks = self._open_sinks(run, step)
        return step

    def _open_sinks(self, run: _Run, resume_step: int | None) -> Sinks | None:
        if not self.dist.is_main:
            return None
        train = run.config.train
        return open_sinks(
            self.out_dir,
            resume_step=resume_step,
            tensorboard=train.tensorboard,
            wandb=train.wandb,
            wandb_project=train.wandb_project,
            name=self.out_dir.name,
            config=run.config.to_dict(),
        )

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, run: _Run, step: int, stop: _StopFlag) -> RunResult:
        train, plan = run.config.train, run.plan
        clock = _Clock(run.counters.wall_time_s)
        run.log.begin(step)
        while step < plan.steps:
            step += 1
            result = self._train_step(run, step, stop)
            record = self._record(run, step, result, clock)
            if (train.eval_every and step % train.eval_every == 0) or step == plan.steps:
                record = self._evaluate(run, step, record)
            run.counters.wall_time_s = clock.elapsed()
            self._write(run, step, record, result)
            interrupted = result.stop_requested or step == self.stop_after
            due = train.checkpoint_every and step % train.checkpoint_every == 0
            if due or interrupted or step == plan.steps:
                self._checkpoint(run, step)
            else:
                run.checkpointer.poll()
            if interrupted and step < plan.steps:
                return self._stopped(run, step, stop)
        return self._finish(run)

    def _train_step(self, run: _Run, step: int, stop: _StopFlag) -> _Step:
        """Forward and backward over the micro-batches, clip, step. Raises on a non-finite
        loss before the weights are touched. Whether any rank was asked to stop travels in the
        losses' all-reduce, so every rank decides alike without a collective of its own."""
        train = run.config.train
        inputs, targets = next(run.loader)
        watch = train.monitor_every and (step % train.monitor_every == 0 or step == 1)
        with monitor.collect(run.model) if watch else contextlib.nullcontext() as stats:
            lm_sum = aux_sum = 0.0
            micro = list(zip(inputs.chunk(train.grad_accum), targets.chunk(train.grad_accum)))
            for index, (x, y) in enumerate(micro):
                with self._gradient_sync(run, last=index == len(micro) - 1), run.autocast():
                    out = run.module(x, y)
                (out.loss / train.grad_accum).backward()
                lm_sum += out.lm_loss.detach().float() / train.grad_accum
                aux_sum += out.aux_loss.detach().float() / train.grad_accum
        # One all-reduce (and device sync) per step: the losses and the stop flag.
        totals = self.dist.sum([float(lm_sum), float(aux_sum), float(stop.signal is not None)])
        lm_loss, aux_loss = (value / self.dist.world_size for value in totals[:2])
        if not math.isfinite(lm_loss + aux_loss):
            raise self._diverged(run, step, lm_loss + aux_loss)
        clip = run.config.optim.grad_clip or math.inf  # 0 disables clipping
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = run.optimizer.param_groups[0]["lr"]
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        run.counters.record_loss(lm_loss)
        indicators = stats.summary() if watch else None
        return _Step(lm_loss, aux_loss, float(grad_norm), lr, indicators, totals[2] > 0)

    @staticmethod
    def _gradient_sync(run: _Run, last: bool):
        """Reduce gradients only after the last micro-batch (DDP's no_sync, FSDP2's flag)."""
        if hasattr(run.model, "set_requires_gradient_sync"):
            run.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        no_sync = getattr(run.module, "no_sync", None)
        return no_sync() if (no_sync is not None and not last) else contextlib.nullcontext()

    def _diverged(self, run: _Run, step: int, loss: float) -> TrainingDiverged:
        saved = run.checkpointer.latest()
        where = f"step {saved[0]} ({saved[1]})" if saved else "none saved yet"
        return TrainingDiverged(
            f"the loss became {loss} at step {step}; the run stopped before updating the weights. "
            f"Last good checkpoint: {where}. Lower the learning rate (optim.base_lr or optim.lr) "
            "or check the data, then start a new run."
        )

    def _record(self, run: _Run, step: int, result: _Step, clock: _Clock) -> dict | None:
        """The metrics record of a logged step (else None)."""
        plan = run.plan
        clock.tokens += plan.batch_tokens
        if not (self._log_step(run, step) or result.indicators):
            return None
        tokens_per_s = clock.throughput()
        record = {
            "step": step,
            "tokens": step * plan.batch_tokens,
            "loss": result.lm_loss + result.aux_loss,
            "lm_loss": result.lm_loss,
            "aux_loss": result.aux_loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": tokens_per_s,
            "elapsed_s": clock.elapsed(),
        }
        if run.peak_flops:
            achieved = plan.flops_per_token * tokens_per_s
            record["mfu"] = achieved / (run.peak_flops * self.dist.world_size)
        record.update(result.indicators or {})
        return record

    @staticmethod
    def _log_step(run: _Run, step: int) -> bool:
        return step % run.config.train.log_every == 0 or step in (1, run.plan.steps)

    def _write(self, run: _Run, step: int, record: dict | None, result: _Step) -> None:
        if record is not None and run.sinks is not None:
            run.sinks.write(record)
        shown = self._log_step(run, step) or (record is not None and "val_loss" in record)
        run.log.step(step, record if shown else None, result.lm_loss)

    def _evaluate(self, run: _Run, step: int, record: dict | None) -> dict | None:
        """Mean validation loss per token; identical for any number of processes."""
        train, dist = run.config.train, self.dist
        if not train.eval_batches:
            return record
        shape = dict(batch_size=train.batch_size, context=train.seq_len, device=dist.device)
        batches = list(
            validation_batches(
                run.corpus.val,
                max_batches=train.eval_batches,
                rank=dist.rank,
                world_size=dist.world_size,
                **shape,
            )
        )
        total_batches = int(dist.sum([len(batches)])[0])
        rounds = math.ceil(total_batches / dist.world_size) if dist.enabled else len(batches)
        # Sharded models need every rank in every forward: a rank with fewer batches runs a
        # batch again and ignores the result.
        spare = (
            batches[0]
            if batches
            else next(validation_batches(run.corpus.val, max_batches=1, **shape))
        )
        loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
        count = 0
        run.module.eval()
        with torch.no_grad():
            for index in range(rounds):
                real = index < len(batches)
                inputs, targets = batches[index] if real else spare
                with run.autocast():
                    logits = run.module(inputs).logits
                if real:
                    loss = nn.functional.cross_entropy(
                        logits.float().flatten(0, 1), targets.flatten(), reduction="sum"
                    )
                    loss_sum += loss.double()
                    count += targets.numel()
        run.module.train()
        total, tokens = dist.sum([loss_sum.item(), float(count)])
        run.counters.val_loss = total / tokens
        return {**(record or {"step": step, "tokens": step * run.plan.batch_tokens}),
                "val_loss": run.counters.val_loss}  # fmt: skip

    def _checkpoint(self, run: _Run, step: int) -> None:
        try:
            run.checkpointer.save(step)
        except CheckpointError:
            raise  # already names the step and the cause (a rank that died during a save)
        except (Exception, CheckpointException) as error:
            saved = run.checkpointer.latest()
            kept = f"step {saved[0]} in {saved[1]} is intact" if saved else "none was saved before"
            raise CheckpointError(
                f"could not write the checkpoint of step {step} ({self._save_failure(error, saved)}"
                f"); the previous checkpoint ({kept}). Free space or fix permissions under "
                f"{self.checkpoint_dir}, then rerun the same command to resume."
            ) from error

    def _save_failure(self, error: BaseException, saved: tuple[int, Path] | None) -> str:
        """Why a save failed, naming a full disk even when the writer's error does not."""
        cause = root_cause(error)
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            return f"No space left on device under {self.checkpoint_dir}"
        free = shutil.disk_usage(self.checkpoint_dir).free
        needed = sum(f.stat().st_size for f in saved[1].iterdir()) if saved else 0
        if free < max(needed, 1 << 20):
            return f"No space left on device: {free // 1024} KiB free, a checkpoint takes about {needed // 1024} KiB"
        return _reason(cause)

    def _stopped(self, run: _Run, step: int, stop: _StopFlag) -> RunResult:
        run.checkpointer.wait()
        run.log.info(
            f"stopped at step {step}/{run.plan.steps}; checkpoint saved in {self.checkpoint_dir}. "
            "Continue with the same command (--resume auto)."
        )
        return RunResult("interrupted", self.out_dir, None, 130 if stop.signal else 0)

    def _finish(self, run: _Run) -> RunResult:
        run.checkpointer.wait()
        summary = self._summary(run)
        if self.dist.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
            val, averaged = summary["val_loss"], len(run.counters.losses)
            val = "-" if val is None else f"{val:.4f} (step {run.plan.steps})"
            run.log.info(
                f"finished: train loss {summary['train_loss']:.4f} (mean of the last {averaged} "
                f"steps), val loss {val}, {summary['tokens_per_s']:.0f} tokens/s over the run; "
                f"{self.out_dir / 'summary.json'}"
            )
        return RunResult("finished", self.out_dir, summary, 0)

    def _summary(self, run: _Run) -> dict[str, Any]:
        config, plan, counters = run.config, run.plan, run.counters
        wall = counters.wall_time_s
        return {
            "name": self.out_dir.name,
            "status": "finished",
            "method": config.optim.method,
            "lr": plan.lr,
            "base_lr": config.optim.base_lr if config.optim.lr is None else None,
            "final_lr": plan.final_lr,
            "train_loss": counters.train_loss,
            "val_loss": counters.val_loss,
            "tokens": plan.tokens,
            "flops": plan.flops,
            "params": plan.params,
            "params_total": (
                sum(p.numel() for p in run.model.parameters())
                if config.model.is_hf
                else config.model.num_params()
            ),
            "depth": config.model.depth,
            "width": config.model.width,
            "batch_tokens": plan.batch_tokens,
            "seq_len": config.train.seq_len,
            "seed": config.train.seed,
            "steps": plan.steps,
            "processes": self.dist.world_size,
            "wall_time_s": wall,
            "tokens_per_s": plan.tokens / wall if wall > 0 else None,
            "corpus": _corpus_summary(run.corpus),
            "config": config.to_dict(),
        }


def _optimizer(config: RunConfig, plan: RunPlan, model, roles, parallel, ns_dtype: str):
    """The method's optimizer (docs/method.md §2) and its LR schedule (docs/method.md §4)."""
    optim = config.optim
    optimizer = build_optimizer(
        model,
        optim.method,
        plan.lr,
        weight_decay=optim.weight_decay,
        depth_ratio=plan.depth_ratio,
        width_ratio=plan.width_ratio,
        momentum=optim.momentum,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
        sphere=optim.sphere,
        ns_dtype=ns_dtype,
        roles=roles,
        replicate_group=parallel.replicate_group,
        head_lr=optim.head_lr,
    )

    def schedule(step: int) -> float:
        return lr_schedule(
            step,
            plan.steps,
            warmup_steps=optim.warmup_steps,
            final_fraction=optim.final_lr_fraction,
            shape=optim.schedule,
            decay_fraction=optim.decay_fraction,
        )

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class _Clock:
    """Wall time of the run (across resumes) and throughput since the last logged step."""

    def __init__(self, already_s: float) -> None:
        self.start = time.perf_counter() - already_s
        self.interval_start = time.perf_counter()
        self.tokens = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def throughput(self) -> float:
        now = time.perf_counter()
        rate = self.tokens / max(now - self.interval_start, 1e-9)
        self.interval_start, self.tokens = now, 0
        return rate


def _reason(error: BaseException) -> str:
    """The root cause of a (possibly wrapped) error, in one line."""
    cause = root_cause(error)
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__


def train(
    config: RunConfig,
    out_dir: str | os.PathLike,
    *,
    resume: str = "auto",
    stop_after: int | None = None,
    keep_steps: tuple[int, ...] = (),
) -> RunResult:
    """Train one run into ``out_dir`` (see the module docstring); returns how it ended.

    ``resume``: ``"auto"`` continues from the newest checkpoint when there is one, ``"must"``
    requires one, ``"never"`` refuses a directory that already holds a run. ``stop_after``
    checkpoints and returns after that many steps (of the whole run), as Ctrl-C would; calling
    again continues, so a long run can be cut into time-limited jobs. The checkpoints of
    ``keep_steps`` are never pruned.
    """
    if resume not in ("auto", "must", "never"):
        raise ValueError(f"resume must be auto, must or never; got {resume!r}")
    dist = setup_distributed(config.train.device)
    out = Path(out_dir)
    trainer = Trainer(config, out, dist, resume, stop_after, keep_steps)
    try:
        result = trainer.run()
        dist.barrier()  # no rank tears down its connections while another still talks
        return result
    except Exception as error:
        # A failed run leaves its reason beside its files (sweeps report it); no summary.json.
        # A mistake caught before the trainer took the directory (a bad config, missing data)
        # writes nothing there.
        if dist.is_main and trainer.claimed:
            with contextlib.suppress(OSError):
                atomic_write_text(out / "error.txt", "".join(traceback.format_exception(error)))
        raise
    finally:
        dist.close()
