"""Text summary and report directory (markdown + PNG plots + JSON) of a study."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from hyperp.analysis.markdown import table
from hyperp.analysis.study import Study
from hyperp.fileio import atomic_write_text

__all__ = ["format_summary", "write_report"]


def _g(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}g}"


def _summary_lines(study: Study, markdown: bool) -> list[str]:
    options = study.options
    bullet = "- " if markdown else "  "
    sub = "  - " if markdown else "    "  # a detail line under a bullet
    head = "## " if markdown else ""
    lines = [
        f"{head}LR optima ({options.y} against {options.x}, quadratic in ln {options.x}; "
        f"grouped by {', '.join(study.group_by) or 'nothing'})",
        "",
    ]
    columns = ["group", "points", f"optimal {options.x}", "95% interval", "optimal loss"]
    columns += ["best observed", "rms residual", "note"]
    rows = []
    for group in study.groups:
        optimum = group.optimum
        if optimum is None:
            note = group.error or ""
            row = [group.label or "all", str(group.x.size), "n/a", "n/a", "n/a", "n/a", "n/a"]
        else:
            low, high = optimum.lr_interval
            interval = (
                "unbounded"
                if low == 0 or math.isinf(high)
                else f"[{_g(low)}, {_g(high)}]"
                if all(math.isfinite(v) for v in optimum.lr_interval)
                else "n/a (no bootstrap)"
                if optimum.bootstrap == 0
                else "n/a (needs 4+ points fitted)"
                if optimum.n_fit < 4
                else "n/a"
            )
            note = optimum.reason or ""
            if optimum.inside and not optimum.reliable:
                note = f"UNRELIABLE: {optimum.unreliable}"
            if optimum.excluded:
                note = (
                    f"fitted {optimum.n_fit} points around the best, {optimum.excluded} outside "
                    f"the window left out. {note}"
                ).strip()
            if optimum.dropped:
                note = f"{optimum.dropped} non-finite loss(es) left out. {note}".strip()
            row = [
                group.label or "all",
                str(optimum.n_points),
                _g(optimum.lr),
                interval if optimum.inside else "n/a",
                _g(optimum.loss),
                f"{_g(optimum.best_loss)} at {_g(optimum.best_lr)}",
                _g(optimum.rms_residual, 3),
            ]
        if markdown:
            rows.append([*row, note])
        else:
            if optimum is None:
                text = f"{bullet}{row[0]}: no fit (n={row[1]})"
            elif optimum.inside and not optimum.reliable:
                text = (
                    f"{bullet}{row[0]}: unreliable fit ({options.x}*={row[2]}, loss*={row[4]}); "
                    f"best observed {row[5]}, n={row[1]}"
                )
            elif optimum.inside:
                text = (
                    f"{bullet}{row[0]}: {options.x}*={row[2]} {row[3]}, loss*={row[4]}, "
                    f"best observed {row[5]}, n={row[1]}, rms residual {row[6]}"
                )
            else:
                text = f"{bullet}{row[0]}: no optimum; best observed {row[5]}, n={row[1]}"
            lines.append(text + (f"\n{sub}! {note}" if note else ""))
    if markdown:
        lines += table(columns, rows)
    sensitivity = [(g, s) for g in study.groups for s in g.sensitivity]
    if sensitivity:
        lines += [
            "",
            f"{head}Sweep-point sensitivity (every k-subset against the all-point fit)",
            "",
        ]
        if markdown:
            columns = ["group", "k of n", "subsets", f"mean rel. error {options.x}*"]
            columns.append("mean rel. error loss*")
            rows = [
                [
                    group.label or "all",
                    f"{item.k} of {item.n_points}",
                    f"{item.n_valid}/{item.n_subsets}",
                    f"{item.lr_relative_error:.2%}",
                    f"{item.loss_relative_error:.3%}",
                ]
                for group, item in sensitivity
            ]
            lines += table(columns, rows)
        else:
            lines.append(f"{bullet}(k: mean relative error of {options.x}* / of loss*)")
            for group in study.groups:
                if group.sensitivity:
                    parts = [
                        f"k={item.k}: {item.lr_relative_error:.1%} / {item.loss_relative_error:.2%}"
                        for item in group.sensitivity
                    ]
                    lines.append(f"{bullet}{group.label or 'all'}: {', '.join(parts)}")
    if study.power_laws:
        lines += [
            "",
            f"{head}Power law of the optimal {options.x} against {options.scale_axis}",
            "",
        ]
        for law in study.power_laws:
            if law.fit is None:
                lines.append(f"{bullet}{law.label}: {law.error}")
                continue
            fit = law.fit
            text = (
                f"{bullet}{law.label}: {options.x}* = {fit.coefficient:.4g} · {law.axis}^"
                f"{fit.exponent:.3f} (± {_g(fit.exponent_stderr, 2)}, linear-space NLS); "
                f"log-log LS exponent {fit.loglog_exponent:.3f}; leave-one-out mean |rel. error| "
                f"{_g(fit.loo_mean_relative_error, 3)} (log-log {_g(fit.loglog_loo_mean_relative_error, 3)})"
            )
            lines.append(text)
            lines.append(
                f"{sub}spread of {options.x}* across {law.axis}: {law.spread:.3g}x "
                "(largest / smallest; 1 means exact transfer)"
            )
            if law.loss_fit is not None:
                loss_fit = law.loss_fit
                lines.append(
                    f"{sub}optimal loss: L* = {loss_fit.coefficient:.4g} · {law.axis}^"
                    f"{loss_fit.exponent:.3f} + {loss_fit.offset:.4f}"
                )
            if law.target is not None:
                lines.append(
                    f"{sub}at {law.axis}={law.target:.4g}: {options.x}* = "
                    f"{_g(fit.predict(law.target))} (log-log fit {_g(fit.predict_loglog(law.target))})"
                )
    if study.compute:
        lines += ["", f"{head}Loss against compute", ""]
        for item in study.compute:
            curve = item.curve
            if curve is None:
                lines.append(f"{bullet}{item.method}: {item.error}")
                continue
            form = f"{curve.A:.4g} · C^-{curve.b:.4f}" + (
                f" + {curve.E:.4f}" if curve.offset else ""
            )
            text = f"{bullet}{item.method}: L(C) = {form} ({len(item.flops)} points, rms residual {_g(curve.rms_residual, 3)})"
            if options.target_flops is not None:
                text += f"; L({options.target_flops:.3g}) = {_g(curve(options.target_flops))}"
            if options.target_loss is not None:
                text += (
                    f"; C for L={options.target_loss:g}: {_g(curve.inverse(options.target_loss))}"
                )
            lines.append(text)
    if study.leverage:
        lines += ["", f"{head}Compute leverage (baseline FLOPs / method FLOPs at equal loss)", ""]
        for item in study.leverage:
            points = ", ".join(
                f"{_g(c, 3)}: {_g(v, 3)}x" for c, v in zip(item.baseline_flops, item.values)
            )
            text = f"{bullet}{item.method} over {item.baseline} at the baseline's points: {points}"
            if item.at_target_loss is not None:
                text += f"; at loss {options.target_loss:g}: {_g(item.at_target_loss, 3)}x"
            if item.at_target_flops is not None:
                text += f"; at {options.target_flops:.3g} FLOPs: {_g(item.at_target_flops, 3)}x"
            lines.append(text)
    notes = list(study.messages)
    notes += [f"run without summary {item['path']}: {item['error']}" for item in study.failed]
    if notes:
        lines += ["", f"{head}Notes", ""]
        lines += [f"{bullet}{note}" for note in notes]
    return lines


def format_summary(study: Study) -> str:
    """A readable plain-text summary of every fit in the study."""
    header = f"{study.n_records} result(s), {len(study.groups)} group(s)"
    return "\n".join([header, "", *_summary_lines(study, markdown=False)]) + "\n"


def write_report(study: Study, directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``report.md``, ``results.json`` and the plots into ``directory`` (each atomically).

    Returns the paths written.
    """
    from hyperp.analysis import plots  # matplotlib is only needed here

    options = study.options
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures = []
    if study.groups:
        figures.append(
            (
                "lr_sweeps.png",
                "Loss against learning rate",
                plots.plot_lr_sweeps(
                    study.groups, x=options.x, y=options.y, scale_axis=options.scale_axis
                ),
            )
        )
    if any(law.fit is not None for law in study.power_laws):
        figures.append(
            (
                "lr_power_law.png",
                f"Optimal {options.x} against {options.scale_axis}",
                plots.plot_power_laws(study.power_laws, x=options.x),
            )
        )
    if study.compute:
        figures.append(
            (
                "loss_vs_flops.png",
                "Loss against compute",
                plots.plot_loss_vs_compute(study.compute, y=options.y),
            )
        )
    if study.leverage:
        figures.append(("leverage.png", "Compute leverage", plots.plot_leverage(study.leverage)))
    for name, _, figure in figures:
        plots.save_figure(figure, out / name)
        written.append(out / name)

    lines = [
        "# Scaling study",
        "",
        f"{study.n_records} result(s) in {len(study.groups)} group(s). Fits follow "
        "docs/method.md §6; an optimum outside the swept range is reported as such, never "
        "extrapolated.",
        "",
        *_summary_lines(study, markdown=True),
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{title}]({name})" for name, title, _ in figures]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    written.append(out / "report.md")
    atomic_write_text(out / "results.json", json.dumps(study.to_dict(), indent=2) + "\n")
    written.append(out / "results.json")
    return written
