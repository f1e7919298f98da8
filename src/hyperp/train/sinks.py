"""Where metrics go: ``metrics.jsonl`` always; TensorBoard and W&B when installed and asked for."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from hyperp.fileio import atomic_write_text

__all__ = ["JsonlSink", "open_sinks"]


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value
    return out


class JsonlSink:
    """One JSON object per line, flushed as written, so a crash loses at most the current line."""

    def __init__(self, path: Path, *, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            # Drop records past the checkpoint: the resumed run logs those steps again.
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()
        self.handle = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(_clean(record)) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except (json.JSONDecodeError, AttributeError):
        return math.inf  # a torn last line from a crash is dropped


class TensorBoardSink:
    def __init__(self, directory: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "train.tensorboard needs TensorBoard: pip install 'hyperp[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(directory))

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, project: str, name: str, config: dict[str, Any], directory: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError("train.wandb needs W&B: pip install 'hyperp[wandb]'") from None
        self.run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=str(directory),
            resume="allow",
            id=name.replace("/", "-"),
        )

    def write(self, record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


class Sinks:
    def __init__(self, sinks: list) -> None:
        self.sinks = sinks

    def write(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.write(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def open_sinks(
    out_dir: Path,
    *,
    resume_step: int | None,
    tensorboard: bool,
    wandb: bool,
    wandb_project: str,
    name: str,
    config: dict[str, Any],
) -> Sinks:
    sinks: list = [JsonlSink(out_dir / "metrics.jsonl", resume_step=resume_step)]
    if tensorboard:
        sinks.append(TensorBoardSink(out_dir / "tensorboard"))
    if wandb:
        sinks.append(WandbSink(wandb_project, name, config, out_dir))
    return Sinks(sinks)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _bar_fits(stream) -> bool:
    """Whether a progress bar can be drawn on ``stream``: a terminal that reports fewer than 20
    columns (0 on some consoles and containers) gets plain step lines instead of an empty bar."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns >= 20
    except (OSError, ValueError, AttributeError):
        return False


def _same_file(a, b) -> bool:
    import os

    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


class RunLog:
    """What a person reads: messages and a plain line every ``log_every`` steps.

    Everything goes to ``RUN/train.log``. On stdout: the messages, and the step lines too when
    stdout is not a terminal (nohup, SLURM, a pipe) or is one too narrow for a bar; on a
    terminal a progress bar (stderr) shows the same numbers instead. Only the main rank writes.
    """

    def __init__(
        self, path: Path | None, *, total_steps: int, start_step: int, progress: bool
    ) -> None:
        import sys

        self.total_steps, self.start_step = total_steps, start_step
        self.file = path.open("a", encoding="utf-8") if path is not None else None
        self.on_terminal = sys.stdout.isatty()
        # A launcher that sends stdout into train.log itself gets each line once.
        self.echo = self.file is None or not _same_file(sys.stdout, self.file)
        self.bar = None
        if path is not None and progress and self.on_terminal and _bar_fits(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
            )
        self.started: tuple[float, int] | None = None
        self.val_shown = ""

    def begin(self, step: int) -> None:
        """The loop starts after ``step`` (0, or the step a resume continues from): the eta's
        clock starts now, so the first step line already has one."""
        self.started = (time.perf_counter(), step)

    def info(self, message: str) -> None:
        if self.file is None:
            return
        if self.bar is not None:
            self.bar.write(message)
        elif self.echo:
            print(message, flush=True)
        self.file.write(message + "\n")
        self.file.flush()

    def step(self, step: int, record: dict[str, Any] | None, loss: float) -> None:
        """Advance the bar; with a logged ``record``, write the step line. A validation loss
        appears on the line of the step that measured it (``record["val_loss"]``), and the bar
        keeps showing it marked with that step."""
        if self.file is None:
            return
        now = time.perf_counter()
        if self.started is None:  # begin() was not called: the clock starts at this step
            self.started = (now, step)
        if self.bar is not None:
            self.bar.update(1)
        if record is None:
            return
        done = step - self.started[1]
        val = record.get("val_loss")
        parts = [f"step {step}/{self.total_steps}", f"loss {loss:.4f}"]
        if val is not None:
            parts.append(f"val {val:.4f}")
        if "lr" in record:
            parts.append(f"lr {record['lr']:.3g}")
        if "tokens_per_s" in record:
            parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
        if done > 0:
            eta = (now - self.started[0]) / done * (self.total_steps - step)
            parts.append(f"eta {_duration(eta)}")
        line = " | ".join(parts)
        self.file.write(line + "\n")
        self.file.flush()
        if self.bar is not None:
            if val is not None:
                self.val_shown = f"{val:.3f} (step {step})"
            shown = {"loss": f"{loss:.3f}"}
            if self.val_shown:
                shown["val"] = self.val_shown
            if "tokens_per_s" in record:
                shown["tok/s"] = f"{record['tokens_per_s']:.3g}"
            self.bar.set_postfix(shown, refresh=False)
        elif self.echo:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.file is not None:
            self.file.close()
            self.file = None
