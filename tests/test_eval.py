"""``hyperp eval``: loss, perplexity and bits per byte on text; lm-eval tasks through the
``hyperp`` model type (a task defined here, on local JSONL; nothing is downloaded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hyperp
from hyperp.cli import main
from hyperp.data import prepare
from serve_support import corpus, trained_run
from support import subprocess_env

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def direct_loss(run, text: str) -> tuple[float, int]:
    """Summed nats over the tokens of one document, computed here by hand: blocks of the
    model's context, each predicted from the token before it; the last, shorter block from a
    whole context of the tokens before it."""
    ids = run.encode(text)
    context, total, count = run.config.model.context, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            end = min(start + context, len(ids) - 1)  # predicts ids[start + 1 : end + 1]
            window = torch.tensor([ids[max(0, end - context) : end + 1]])
            logits = run.model(window[:, :-1]).logits
            scored = end - start
            total += F.cross_entropy(
                logits[0, -scored:], window[0, -scored:], reduction="sum"
            ).item()
            count += scored
    return total, count


def test_eval_on_raw_text_reports_loss_perplexity_and_bits_per_byte(tmp_path, capsys):
    run_dir = trained_run("dense_ga")
    capsys.readouterr()
    text = (STDLIB / "json" / "decoder.py").read_text()
    (tmp_path / "decoder.py").write_text(text)
    assert main(["eval", str(run_dir), "--data", str(tmp_path / "decoder.py"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["data"]
    nats, count = direct_loss(hyperp.load_run(run_dir, device="cpu"), text)
    assert report["tokens"] == count
    assert report["bytes"] == len(text.encode("utf-8"))
    assert report["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert report["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-5)
    assert report["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(text.encode()))
    assert main(["eval", str(run_dir), "--data", str(tmp_path / "decoder.py")]) == 0
    assert "bits/byte" in capsys.readouterr().out


def test_eval_on_a_prepared_directory_uses_its_split_and_checks_the_tokenizer(tmp_path, capsys):
    run_dir = trained_run("dense_ga")
    run = hyperp.load_run(run_dir, device="cpu")
    capsys.readouterr()
    assert (
        main(["eval", str(run_dir), "--data", str(corpus()), "--json", "--max-tokens", "500"]) == 0
    )
    report = json.loads(capsys.readouterr().out)["data"]
    assert (report["split"], report["tokens"]) == ("val", 500)
    assert report["bytes"] > 0 and math.isfinite(report["loss"])
    # The same text under another tokenizer cannot be scored with this run's.
    other = prepare([STDLIB / "shlex.py"], tmp_path / "other", vocab_size=300, val_fraction=0.0)
    assert main(["eval", str(run_dir), "--data", str(other), "--split", "train"]) == 2
    assert f"--tokenizer {run.tokenizer_path}" in capsys.readouterr().err
    assert main(["eval", str(run_dir)]) == 2
    assert "--data PATH" in capsys.readouterr().err


# ----- lm-evaluation-harness ---------------------------------------------------------------

CHOICES = [
    {"context": "import os\nimport", "choices": [" sys", " ==", ")))"], "label": 0},
    {"context": "def main(", "choices": ["self", "1 + + 2", "\n\n\n"], "label": 0},
    {"context": "    return", "choices": [" None", " return return", "((("], "label": 0},
    {"context": "class Parser", "choices": ["(object):", "))) ===", " 0 0 0"], "label": 0},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """Two lm-eval tasks on local JSONL: a multiple-choice one and a rolling-loglikelihood one."""
    directory = tmp_path_factory.mktemp("tasks")
    (directory / "choice.jsonl").write_text("".join(json.dumps(d) + "\n" for d in CHOICES))
    document = (STDLIB / "json" / "scanner.py").read_text()
    (directory / "rolling.jsonl").write_text(json.dumps({"text": document}) + "\n")
    (directory / "rolling.txt").write_text(document)
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    (directory / "hyperp_tiny_choice.yaml").write_text(
        "task: hyperp_tiny_choice\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'choice.jsonl'}\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n" + common
    )
    (directory / "hyperp_tiny_rolling.yaml").write_text(
        "task: hyperp_tiny_rolling\n"
        f"dataset_kwargs:\n  data_files:\n    test: {directory / 'rolling.jsonl'}\n"
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: bits_per_byte\n  - metric: word_perplexity\n" + common
    )
    return directory


def choice_accuracy(run) -> float:
    """The multiple-choice accuracy computed here: the continuation with the highest summed
    log-probability after the context (context tokens as lm-eval cuts them)."""
    correct = 0
    with torch.no_grad():
        for doc in CHOICES:
            scores = []
            for choice in doc["choices"]:
                context = run.encode(doc["context"])
                whole = run.encode(doc["context"] + choice)
                logits = run.model(torch.tensor([whole[:-1]])).logits[0].log_softmax(-1)
                targets = torch.tensor(whole[len(context) :])
                picked = logits[len(context) - 1 :].gather(-1, targets[:, None])
                scores.append(float(picked.sum()))
            correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    return correct / len(CHOICES)


def test_eval_tasks_through_lm_eval(task_dir, capsys, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = trained_run("dense_ga")
    run = hyperp.load_run(run_dir, device="cpu")
    capsys.readouterr()
    command = ["eval", str(run_dir), "--tasks", "hyperp_tiny_choice,hyperp_tiny_rolling"]
    assert main([*command, "--include-path", str(task_dir), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["tasks"]["results"]
    assert results["hyperp_tiny_choice"]["acc,none"] == pytest.approx(choice_accuracy(run))
    # A rolling log-likelihood over one document is the loss hyperp eval reports on it.
    assert main(["eval", str(run_dir), "--data", str(task_dir / "rolling.txt"), "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)["data"]["bits_per_byte"]
    assert results["hyperp_tiny_rolling"]["bits_per_byte,none"] == pytest.approx(ours, rel=1e-5)
    assert (
        main(["eval", str(run_dir), "--tasks", "no_such_task", "--include-path", str(task_dir)])
        == 2
    )
    assert "unknown lm-eval task" in capsys.readouterr().err


def test_lm_eval_command_line_with_the_hyperp_model(task_dir):
    """lm-eval's own command line (with hyperp registered): python -m hyperp.serve.lm_eval."""
    pytest.importorskip("lm_eval")
    run_dir = trained_run("dense_ga")
    command = [sys.executable, "-m", "hyperp.serve.lm_eval", "--model", "hyperp"]
    done = subprocess.run(
        [
            *command,
            "--model_args",
            f"run={run_dir}",
            "--device",
            "cpu",
            "--tasks",
            "hyperp_tiny_choice",
            "--include_path",
            str(task_dir),
            "--batch_size",
            "4",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = choice_accuracy(hyperp.load_run(run_dir, device="cpu"))
    row = next(line for line in done.stdout.splitlines() if "hyperp_tiny_choice" in line)
    cells = [cell.strip() for cell in row.split("|")]
    assert float(cells[cells.index("acc") + 2]) == pytest.approx(accuracy, abs=1e-4)


def test_lm_eval_hf_model_on_an_export_scores_like_the_run(tmp_path):
    """lm-eval's stock ``hf`` model on a Qwen3 export (no remote code) gives the run's own
    log-likelihoods, when contexts start with <|endoftext|> (add_bos_token)."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from hyperp.serve.export import export_run
    from hyperp.serve.lm_eval import HyperpLM

    run_dir = trained_run("dense_plain")
    exported = export_run(run_dir, tmp_path / "hf")
    pairs = [("import os\nimport", " sys"), ("def main(", "self):"), ("", "return None")]
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(pairs)
    ]
    ours = HyperpLM(run=str(run_dir), device="cpu").loglikelihood(requests, disable_tqdm=True)
    hf = HFLM(pretrained=str(exported.directory), add_bos_token=True, device="cpu", batch_size=2)
    theirs = hf.loglikelihood(requests, disable_tqdm=True)
    for (mine, greedy), (other, other_greedy) in zip(ours, theirs):
        assert other == pytest.approx(mine, abs=1e-4) and greedy == other_greedy


def test_lm_eval_generation_stops_where_the_task_says(capsys):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from hyperp.serve.lm_eval import HyperpLM

    run_dir = trained_run("dense_ga")
    model = HyperpLM(run=str(run_dir), device="cpu")
    for prompt in ["def main", "import os\nclass "]:
        capsys.readouterr()
        assert main(["generate", str(run_dir), "--prompt", prompt, "--temperature", "0",
                     "--max-new-tokens", "20", "--device", "cpu"]) == 0  # fmt: skip
        greedy = capsys.readouterr().out[len(prompt) : -1]
        stop = greedy[4:6]  # a string the greedy continuation does contain
        options = {"until": [stop], "max_gen_toks": 20}
        request = Instance(
            request_type="generate_until", doc={}, arguments=(prompt, options), idx=0
        )
        (answer,) = model.generate_until([request])
        assert answer == greedy[: greedy.index(stop)]
    with pytest.raises(ValueError, match="unknown model_args"):
        HyperpLM(run=str(run_dir), stpe=3)
