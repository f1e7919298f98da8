"""``hyperp eval``: a run's loss, perplexity and bits per byte on text, and lm-eval tasks."""

from __future__ import annotations

import json
import sys

from hyperp.cli import UserError, add_verb

DESCRIPTION = """\
Evaluate a run's newest checkpoint (or --step N).

--data: a prepared directory (its validation split; --split train for the other) or raw text
  files, directories and globs, tokenized with the run's tokenizer as `hyperp prepare` would.
  Reports the mean loss per token, perplexity and bits per byte (the loss in bits divided by
  the UTF-8 bytes of the predicted tokens, comparable across tokenizers).
--tasks: downstream tasks through lm-evaluation-harness (pip install 'hyperp[eval]'); tasks of
  your own come from --include-path DIR (lm-eval task YAML files). The same model type serves
  lm-eval's own command line: python -m hyperp.serve.lm_eval --model hyperp --model_args run=RUN
"""


def register(sub) -> None:
    parser = add_verb(
        sub,
        "eval",
        help="loss, perplexity and bits per byte on text; lm-eval tasks",
        description=DESCRIPTION,
        example="hyperp eval runs/tiny-1a2b3c --data notes/ --json",
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by hyperp train")
    parser.add_argument(
        "--data", nargs="+", metavar="PATH", help="a prepared directory or raw text files"
    )
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--max-tokens", type=int, help="evaluate at most this many tokens")
    parser.add_argument("--tasks", help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", metavar="DIR", help="extra lm-eval task definitions")
    parser.add_argument("--num-fewshot", type=int, help="few-shot examples per task")
    parser.add_argument("--limit", type=float, help="examples per task (or a fraction if < 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _run_tasks(loaded, args) -> dict:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        from hyperp.serve.lm_eval import HyperpLM
    except ImportError:
        raise UserError("--tasks needs lm-evaluation-harness: pip install 'hyperp[eval]'") from None
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    # Indexing lm-eval's thousands of built-in tasks takes a while: skip it when the tasks
    # asked for are all in --include-path.
    manager = None
    if args.include_path:
        manager = TaskManager(include_path=args.include_path, include_defaults=False)
        if not all(name in manager.all_tasks for name in tasks):
            manager = None
    manager = manager or TaskManager(include_path=args.include_path)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        hint = " (or add --include-path DIR with their YAML)" if not args.include_path else ""
        raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}; check the names{hint}")
    results = lm_eval.simple_evaluate(
        model=HyperpLM(loaded=loaded, batch_size=args.batch_size),
        tasks=tasks,
        task_manager=manager,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        log_samples=False,
    )
    return {"results": results["results"], "versions": results.get("versions", {})}


def run(args) -> int:
    if not args.data and not args.tasks:
        raise UserError("give --data PATH (text to score) and/or --tasks NAMES (lm-eval tasks)")
    from hyperp.serve.evaluation import evaluate_text
    from hyperp.serve.run import load_run

    loaded = load_run(args.run_dir, step=args.step, device=args.device)
    report: dict = {"run": str(loaded.path), "step": loaded.step}
    if args.data:
        result = evaluate_text(
            loaded,
            args.data,
            split=args.split,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            progress=not args.no_progress and not args.json,
        )
        report["data"] = result.to_dict()
    if args.tasks:
        report["tasks"] = _run_tasks(loaded, args)
    from hyperp.cli.export import kept_message
    from hyperp.train.checkpoint import keep_checkpoint

    keep_checkpoint(loaded.path, loaded.step, "evaluated")
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"run {loaded.path} at step {loaded.step}; {kept_message(loaded.step)}")
    if args.data:
        data = report["data"]
        print(
            f"data {data['data']} ({data['split']}): {data['tokens']:,} tokens, "
            f"{data['bytes']:,} bytes\n"
            f"  loss {data['loss']:.4f}  perplexity {data['perplexity']:.2f}  "
            f"bits/byte {data['bits_per_byte']:.4f}"
        )
    if args.tasks:
        for task, metrics in report["tasks"]["results"].items():
            shown = ", ".join(
                f"{name.split(',')[0]} {value:.4f}"
                for name, value in metrics.items()
                if isinstance(value, float) and "stderr" not in name
            )
            print(f"task {task}: {shown}")
    return 0
