"""The ``hyperp`` model type of lm-evaluation-harness (extra ``eval``).

Importing this module registers ``hyperp`` in lm-eval's model registry, so in Python::

    import hyperp.serve.lm_eval, lm_eval
    lm_eval.simple_evaluate(model="hyperp", model_args="run=runs/tiny-1a2b3c", tasks=[...])

lm-eval's own ``lm_eval`` command has no way to discover models of other packages, so this
module is also that command with ``hyperp`` registered; it takes every lm-eval option::

    python -m hyperp.serve.lm_eval --model hyperp --model_args run=RUN,step=300 --tasks hellaswag

(or use ``hyperp eval RUN --tasks ...``). An exported Hugging Face directory works with the
plain command: ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True``.

Every context starts a new document (after the end-of-text id), as in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry

from hyperp.serve.run import LoadedRun, load_run

__all__ = ["HyperpLM", "main"]


def _ensure_builtin_models_registered() -> None:
    # lm-eval fills its registry lazily only while it is empty; registering ours first would
    # hide its own model types (hf, vllm, ...) from the same process.
    if len(model_registry) == 0:
        import lm_eval.models  # noqa: F401


class HyperpLM(TemplateLM):
    """A hyperp run for lm-eval: ``run`` (directory) and optional ``step`` in model_args;
    ``device`` and ``batch_size`` from lm-eval's own options; or a loaded run as ``loaded``."""

    def __init__(
        self,
        run: str | None = None,
        step: int | str | None = None,
        device: str | None = None,
        batch_size: int | str | None = 8,
        loaded: LoadedRun | None = None,
        max_batch_size: int | None = None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"unknown model_args for the hyperp model: {', '.join(sorted(unknown))}; "
                "it takes run=RUN_DIR and step=N"
            )
        if loaded is None:
            if run is None:
                raise ValueError("the hyperp model needs model_args run=RUN_DIR")
            if device and str(device).startswith("cuda") and not torch.cuda.is_available():
                device = "cpu"  # lm-eval's default device is cuda:0, also on CPU machines
            loaded = load_run(run, step=None if step in (None, "") else int(step), device=device)
        self.run = loaded
        self.model = loaded.model
        self.context = loaded.config.model.context
        self.batch_size = 8 if batch_size in (None, "auto") else int(batch_size)
        if self.run.eot_id is None:
            raise ValueError(f"the tokenizer of {loaded.path} has no end-of-text token")

    @property
    def eot_token_id(self) -> int:
        return self.run.eot_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs):
        return self.run.encode(string, document_start=add_special_tokens is not False)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.run.decode(tokens)

    @torch.no_grad()
    def _score(self, sequences: list[list[int]], counts: list[int]) -> list[tuple[float, bool]]:
        """Log-probability of the last ``counts[i]`` tokens of each sequence, and whether
        each of them was the greedy choice. Sequences of one batch are right-padded, which
        a causal model never sees from earlier positions."""
        longest = max(len(s) for s in sequences)
        batch = torch.full((len(sequences), longest), self.eot_token_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            batch[row, : len(sequence)] = torch.tensor(sequence)
        logits = self.model(batch[:, :-1].to(self.run.device)).logits.float()
        logprobs = F.log_softmax(logits, dim=-1).cpu()
        results = []
        for row, (sequence, count) in enumerate(zip(sequences, counts)):
            end = len(sequence) - 1
            rows = logprobs[row, end - count : end]
            targets = torch.tensor(sequence[-count:])
            picked = rows.gather(-1, targets[:, None]).squeeze(-1)
            results.append((float(picked.sum()), bool((rows.argmax(-1) == targets).all())))
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        # Longest first, so each batch pads little; the answers go back in request order.
        order = sorted(
            range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2])
        )
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        for first in range(0, len(order), self.batch_size):
            chunk = order[first : first + self.batch_size]
            sequences, counts = [], []
            for index in chunk:
                _, context, continuation = requests[index]
                # Keep the newest context + 1 tokens: the continuation and as much before it.
                sequences.append((context + continuation)[-(self.context + 1) :])
                counts.append(min(len(continuation), len(sequences[-1]) - 1))
            for index, answer in zip(chunk, self._score(sequences, counts)):
                answers[index] = answer
                self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for request in requests:
            (text,) = request.args
            windows = [
                lm_utils.make_disjoint_window(window)
                for window in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.context,
                    context_len=1,
                )
            ]
            scored = self._loglikelihood_tokens([(None, a, b) for a, b in windows])
            total = sum(logprob for logprob, _ in scored)
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        outputs = []
        for request in requests:
            context, options = request.args
            options = dict(options or {})
            until = options.pop("until", None) or []
            until = [stop for stop in ([until] if isinstance(until, str) else until) if stop]
            max_new = int(options.pop("max_gen_toks", 256))
            sample = bool(options.pop("do_sample", False))
            temperature = float(options.pop("temperature", 1.0 if sample else 0.0))
            prompt = self.tok_encode(context)[-self.context :]
            generator = torch.Generator(device=self.run.device).manual_seed(1234)
            new: list[int] = []
            text = ""
            for token in self.model.stream(
                torch.tensor([prompt], device=self.run.device),
                max_new,
                temperature=temperature if sample else 0.0,
                generator=generator,
            ):
                if int(token[0]) == self.eot_token_id:
                    break
                new.append(int(token[0]))
                text = self.tok_decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), text)
        return outputs


_ensure_builtin_models_registered()
if "hyperp" not in model_registry:
    # By import path, so that running this file as __main__ registers the same class.
    model_registry.register("hyperp", target="hyperp.serve.lm_eval:HyperpLM")


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with the ``hyperp`` model type registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
