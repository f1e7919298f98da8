"""``hyperp plot``: training curves of runs and sweeps as a PNG."""

from __future__ import annotations

from hyperp.cli import add_verb


def register(sub) -> None:
    parser = add_verb(
        sub,
        "plot",
        help="plot loss, LR and stability indicators of runs or sweeps",
        example="hyperp plot runs/lr-sweep --out lr-sweep.png",
        description=(
            "Train loss (lines) and validation loss (circles) against step and tokens, the\n"
            "LR schedule (the whole planned one, dotted, and the current step), and a row of\n"
            "stability indicators (branch RMS, outliers, attention and router Z, MaxVio) when\n"
            "metrics.jsonl has them, with the bounds hyperp reproduce judges them by as grey\n"
            "dashed lines. Give run directories, sweep\n"
            "directories (every run below them), or both; runs of a sweep are coloured by the\n"
            "swept value. Works on running runs too."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP")
    parser.add_argument("--out", required=True, metavar="PNG", help="the image to write")
    parser.add_argument("--title", help="figure title (default: the run name or run count)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from hyperp.analysis.plots import save_figure
    from hyperp.serve.curves import plot_runs

    figure, runs = plot_runs(args.paths, title=args.title)
    save_figure(figure, args.out)
    print(f"wrote {args.out} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    return 0
