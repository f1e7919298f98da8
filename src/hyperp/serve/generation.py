"""Sampling text from a loaded run, streamed as it is decoded (``hyperp generate``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hyperp.serve.run import LoadedRun

__all__ = ["generate_text"]


def generate_text(
    run: LoadedRun,
    prompt: str,
    *,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_at_end_of_text: bool = True,
) -> Iterator[str]:
    """Yield the continuation of ``prompt`` in pieces of text as tokens are sampled.

    The prompt starts a new document (it follows the end-of-text id, as documents did in
    training). The same ``seed`` gives the same text. A piece is held back while it ends in an
    incomplete UTF-8 sequence, so every yielded piece is valid text. Sampling stops after
    ``max_new_tokens`` or, with ``stop_at_end_of_text``, when the model ends the document.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    ids = run.encode(prompt)
    if not ids:
        raise ValueError(
            "the prompt is empty and the tokenizer has no end-of-text token to start from"
        )
    generator = torch.Generator(device=run.device).manual_seed(seed)
    prompt_tokens = torch.tensor([ids], dtype=torch.long, device=run.device)
    new_ids: list[int] = []
    shown = ""
    for token in run.model.stream(
        prompt_tokens,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    ):
        token_id = int(token[0])
        if stop_at_end_of_text and token_id == run.eot_id:
            break
        new_ids.append(token_id)
        text = run.decode(new_ids)
        if text.endswith("\ufffd"):  # the rest of a multi-byte character is still to come
            continue
        if len(text) > len(shown) and text.startswith(shown):
            yield text[len(shown) :]
            shown = text
    text = run.decode(new_ids)
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown) :]
