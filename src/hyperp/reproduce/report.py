"""REPORT.md, rendered from ``results.json`` alone (no markdown is ever parsed back)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hyperp.analysis.markdown import cell as _number
from hyperp.analysis.markdown import interval as _interval
from hyperp.analysis.markdown import table as _table
from hyperp.reproduce.results import headline

__all__ = ["render_markdown"]


def _estimate(claim: dict[str, Any]) -> tuple[str, str]:
    estimate = claim.get("estimate")
    interval = claim.get("interval") or [None, None]
    if estimate is None:
        return "-", "-"
    return _number(estimate), _interval(interval)


def _claim_rows(claims: Sequence[dict[str, Any]], with_study: dict[str, str] | None = None):
    rows = []
    for claim in claims:
        estimate, interval = _estimate(claim)
        row = [
            claim["label"],
            claim["quantity"],
            estimate,
            interval,
            claim["region"],
            f"**{claim['verdict']['text']}**",
        ]
        if with_study is not None:
            row.append(with_study.get(claim["key"], ""))
        rows.append(row)
    return rows


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _regime_row(entry: dict[str, Any]) -> list[Any]:
    regime = entry["regime"]
    if not regime.get("runs"):
        return [entry["title"], 0, "-", "-", "-", "-"]
    params, ratio, steps = regime["params"], regime["tokens_per_param"], regime["steps"]
    return [
        entry["title"],
        regime["runs"],
        f"{params[0] / 1e6:.3g}-{params[1] / 1e6:.3g}",
        f"{ratio[0]:.2g}-{ratio[2]:.2g} ({ratio[1]:.2g})",
        f"{steps[0]:,}-{steps[2]:,} ({steps[1]:,})",
        "inside" if regime["inside"] else "outside",
    ]


def _regime_text(regime: dict[str, Any]) -> str:
    if not regime.get("runs"):
        return "no finished runs"
    params = regime["params"]
    ratio = regime["tokens_per_param"]
    steps = regime["steps"]
    where = "inside" if regime["inside"] else "outside"
    return (
        f"{regime['runs']} runs of {params[0] / 1e6:.3g}-{params[1] / 1e6:.3g}M parameters, "
        f"{ratio[0]:.2g}-{ratio[2]:.2g} tokens per parameter (median {ratio[1]:.2g}), "
        f"{steps[0]:,}-{steps[2]:,} steps (median {steps[1]:,}); the paper: "
        f"{regime['paper']['params']} parameters, {regime['paper']['tokens_per_param']} tokens "
        f"per parameter, {regime['paper']['steps']} steps. This study is {where} the paper's "
        "regime."
    )


def _data_lines(data: dict[str, Any], max_tokens: int | None) -> list[str]:
    lines = []
    corpora = data.get("corpora", [])
    if len(corpora) != 1:
        lines.append(
            f"- The runs used {len(corpora)} corpora: "
            + "; ".join(str(c.get("description") or c.get("path")) for c in corpora)
            + "."
        )
        return lines
    corpus = corpora[0]
    lines.append(
        f"- Corpus: {corpus.get('description') or corpus.get('path')} "
        f"(`{corpus.get('path')}`, format {corpus.get('format') or 'unknown'}, vocabulary "
        f"{_number(corpus.get('vocab_size'))})."
    )
    lines.append(
        f"- Training split: {_number(corpus.get('train_tokens'))} tokens in "
        f"{_number(corpus.get('train_documents'))} documents. Held-out validation split: "
        f"{_number(corpus.get('val_tokens'))} tokens in {_number(corpus.get('val_documents'))} "
        "documents."
    )
    evaluated = data.get("evaluated_tokens") or []
    if len(evaluated) == 1:
        documents = data.get("evaluated_documents")
        of = f" from {documents} documents" if documents else ""
        lines.append(
            f"- Every run's validation loss is measured on the same first {evaluated[0]:,} "
            f"tokens of the validation split{of}, shared by all studies."
        )
    elif evaluated:
        lines.append(
            "- Validation sets differ between runs: "
            + ", ".join(f"{t:,}" for t in evaluated)
            + " tokens."
        )
    train_tokens = corpus.get("train_tokens")
    if max_tokens and train_tokens:
        lines.append(
            f"- The largest run trains on {max_tokens:,} tokens, {max_tokens / train_tokens:.1%} "
            "of the training split: no run sees more than one pass over it. The loader draws "
            "random windows, so within a run a window recurs only by chance (an expected share "
            f"of about {max_tokens / train_tokens / 2:.1%} for the largest run)."
        )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The report: what is resolved, the verdicts, how they are reached, what was run, and one
    section per study with its numbers, tables and figures."""
    studies: dict[str, dict[str, Any]] = results["studies"]
    size = results["size"]
    groups = headline(studies)
    study_of = {c["key"]: entry["title"] for entry in studies.values() for c in entry["claims"]}
    runs_dir = results["runs_dir"]
    where = "the run directories beside it" if runs_dir == "." else f"the runs under `{runs_dir}`"
    lines = [
        f"# HyperP at small scale: `hyperp reproduce --{size}`",
        "",
        "The paper's claims (docs/method.md §1), each tested by a study designed to isolate it, judged "
        "by a 95% interval against a threshold stated before any run. Every number below is read "
        f"or fitted from {where} and stored in `{results['results_file']}`, from which this "
        "report is rendered.",
        "",
        f"- **Resolved at this scale**: {', '.join(groups['resolved']) or 'none'}.",
        "- **Measured at this scale, outside the paper's regime** (the paper's claims need the "
        f"GPU sizes, `--full`, or larger): {', '.join(groups['outside_regime']) or 'none'}.",
        "- **Not resolved at this scale** (intervals straddle the threshold, or too few usable "
        f"optima; need the GPU sizes): {', '.join(groups['not_resolved']) or 'none'}.",
        "",
        "## Verdicts",
        "",
        *_table(
            ["claim", "number", "estimate", "95% interval", "holds when", "verdict", "study"],
            [row for entry in studies.values() for row in _claim_rows(entry["claims"], study_of)],
        ),
        "",
        "## How the verdicts are reached",
        "",
        "- A claim **holds** when the 95% interval of its number lies inside the region where "
        "the claim is true, is **contradicted** when the interval lies entirely outside it, and "
        "is otherwise **not resolved at this scale**. The regions use the thresholds below, "
        "fixed before any run (`hyperp.reproduce.catalogue`).",
        "- Each study states its regime beside the paper's. A study whose median run trains "
        "on fewer tokens per parameter or for fewer steps than the regime thresholds is outside "
        "the paper's regime: a contradiction there reads \"outside the paper's regime\", not a "
        "failure of the claim. Two claims are properties of the code or of initialization and "
        "do not depend on the regime (the MuonH decay check, the SqrtGate RMS at init).",
        f"- Intervals: {results['bootstrap']['method']}",
        "- Optimal LRs: a quadratic in ln(LR) fitted to the mean losses (over seeds) of the "
        "two LRs on each side of the best one, so diverged and far-off points do not bend it. "
        "An optimum outside the LRs fitted, or whose fit is unreliable (its minimum lies below "
        "every observed loss by more than the grid spacing and the noise allow, or the parabola "
        "misses the best point by more than the loss changes beside it), is shown but enters no "
        "trend.",
        "",
        *_table(
            ["threshold", "value", "meaning"],
            [[t["name"], t["value"], t["meaning"]] for t in results["thresholds"]],
        ),
        "",
        "## What was run",
        "",
        f"- Command: `{results['command']}` ({results['size_description']}). Rerunning it "
        "resumes: finished runs are kept and the same numbers come back."
        + (
            f" The {len(results['on_request'])} diagnosis studies here run only when named with "
            "`--only` (their sections give their commands) and are not part of that time."
            if results.get("on_request")
            else ""
        ),
        "- Runs (every run the studies here train, those that tune another study's setting "
        f"included): {results['runs']['finished']} finished, {results['runs']['diverged']} diverged "
        f"(they count as diverged points of their LR curves), {results['runs']['failed']} failed "
        f"otherwise; {results['runs']['training_hours']:.2f} hours of training in total (sum "
        "over runs).",
        *_data_lines(results.get("data", {}), results["runs"].get("max_tokens")),
        "",
    ]
    lines += _table(
        [
            "study",
            "runs",
            "parameters (M)",
            "tokens / parameter (median)",
            "steps (median)",
            "paper's regime",
        ],
        [_regime_row(entry) for entry in studies.values()],
    )
    paper = next(iter(studies.values()))["regime"]["paper"] if studies else None
    if paper:
        lines += [
            "",
            f"The paper: {paper['params']} parameters, {paper['tokens_per_param']} tokens per "
            f"parameter, {paper['steps']} steps.",
        ]
    lines.append("")
    for index, (name, entry) in enumerate(studies.items(), start=1):
        lines += _study_section(index, name, entry)
    return "\n".join(lines).rstrip() + "\n"


def _study_section(index: int, name: str, entry: dict[str, Any]) -> list[str]:
    lines = [
        f"## {index}. {entry['title']}",
        "",
        f"**Question.** {entry['question']}",
        "",
        f"**Design.** {entry['design']}",
        "",
        f"**Regime.** {_regime_text(entry['regime'])}",
        "",
        f"Command for this section alone: `{entry['command']}`",
        "",
    ]
    if entry["claims"]:
        columns = ["claim", "number", "estimate", "95% interval", "holds when", "verdict"]
        lines += _table(
            [*columns, "replicates dropped"],
            [
                [*row, _share(claim.get("dropped"))]
                for row, claim in zip(_claim_rows(entry["claims"]), entry["claims"])
            ],
        )
        lines.append("")
        notes = [f"{c['label']}: {c['note']}" for c in entry["claims"] if c.get("note")]
        lines += [f"- {note}" for note in notes]
        if notes:
            lines.append("")
    if entry.get("findings"):
        lines += ["**What the data say.** " + " ".join(entry["findings"]), ""]
    if entry["numbers"]:
        lines += _table(
            ["number (context, no verdict)", "estimate", "95% interval", "note"],
            [
                [n["name"], n["estimate"], n["interval"], n.get("note") or ""]
                for n in entry["numbers"]
            ],
        )
        lines.append("")
    for figure in entry["figures"]:
        lines += [f"![{entry['title']}: {figure['caption']}]({figure['path']})", ""]
    for table in entry["tables"]:
        if not table["rows"]:
            continue
        lines += [f"{table['title']}:", "", *_table(table["columns"], table["rows"]), ""]
    runs = entry["runs"]
    lines.append(
        f"Runs: {runs['finished']} finished, {runs['diverged']} diverged, {runs['failed']} "
        f"failed; {runs['training_hours']:.2f} training hours."
        + "".join(
            f" Besides, it trains {i['finished']} finished and {i['diverged']} diverged runs of "
            f"the {i['study'].replace('_', '-')} study for {i['what']} "
            f"({i['training_hours']:.2f} hours)."
            for i in runs.get("inputs", [])
        )
    )
    lines.append("")
    lines += [f"- {note}" for note in entry["notes"]]
    if entry["notes"]:
        lines.append("")
    return lines
