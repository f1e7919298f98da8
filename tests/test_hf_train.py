"""`hyperp train` on Hugging Face causal LMs (model.hf / model.hf_config): training, the plan,
refusals, bit-exact resume from a run that no longer needs its source directory, one process
against FSDP2, DDP and HSDP on gloo ranks, activation checkpointing, torch.compile, and eval,
generate and export of such a run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyperp.cli import main
from hyperp.train import load_config
from hyperp.train.trainer import train
from support import subprocess_env
from training import (
    PIN_FP32,
    assert_compiles_like_eager,
    assert_equal_up_to_rounding,
    assert_same_weights,
    logged,
)

pytest.importorskip("transformers")

LLAMA = {"model_type": "llama", "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
         "max_position_embeddings": 64}  # fmt: skip
GPT2 = {"model_type": "gpt2", "vocab_size": 512, "n_embd": 32, "n_layer": 2, "n_head": 2,
        "n_positions": 64, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0}  # fmt: skip
MIXTRAL = {**{k: v for k, v in LLAMA.items() if k != "model_type"}, "model_type": "mixtral",
           "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
           "output_router_logits": True}  # fmt: skip
RUN = {
    "train.batch_size": 8,
    "train.seq_len": 32,
    "train.steps": 8,
    "train.log_every": 1,
    "train.eval_every": 4,
    "train.eval_batches": 2,
    "train.checkpoint_every": 4,
    "train.monitor_every": 3,
    "train.progress": False,
    "train.precision": "fp32",
    "optim.base_lr": 0.03,
}


def hf_run(corpus, **overrides):
    return load_config(None, {**RUN, "data.path": str(corpus), **overrides})


@pytest.mark.parametrize(
    "hf", [LLAMA, GPT2, MIXTRAL], ids=["llama", "gpt2-conv1d-tied", "mixtral-moe"]
)
def test_a_hf_config_trains_and_records_what_rebuilds_it(corpus, tmp_path, hf):
    out = tmp_path / "run"
    result = train(hf_run(corpus, **{"model.hf_config": hf}), out)
    assert result.status == "finished"
    losses = logged(out)
    # it learns: from ln 512 = 6.24 (Llama's 0.02 init starts slowly: 6.25 -> 6.12 in 8 steps)
    assert losses[8] < losses[1] - 0.1
    assert logged(out, "val_loss")[8] < logged(out, "val_loss")[4]
    # Mixtral's own balancing loss, weighted by its router_aux_loss_coef, joins the loss
    assert (logged(out, "aux_loss")[8] > 0) == (hf is MIXTRAL)
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hf_config"] == hf  # the run's own copy of the model's config
    assert (saved["model"]["depth"], saved["model"]["width"]) == (2, 32)  # mirrored shape
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    monitored = next(r for r in records if r["step"] == 3)
    assert {"residual_rms/0", "residual_rms/1", "outlier_pct", "logit_rms"} <= set(monitored)
    log = (out / "train.log").read_text()
    assert "not applicable to this model: Depth-muP" in log
    assert ("the experts a token uses" in log) == (hf is MIXTRAL)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params_total"] == sum(
        p.numel() for p in _model(hf).parameters()
    )  # tied weights once


def _model(hf):
    from hyperp.hf import build_hf_model

    return build_hf_model(hf)


def test_the_plan_counts_the_model_and_transfers_by_its_depth(corpus):
    from hyperp.hf import hf_scale

    config = hf_run(corpus, **{"model.hf_config": LLAMA, "optim.base_depth": 8})
    plan = config.resolve(512).plan()
    scale = hf_scale(LLAMA, 32)
    built = _model(LLAMA)
    assert plan.params == sum(p.numel() for p in built.parameters()) == scale.params
    attention = 4 * 2 * 2 * 16 * 32  # 4 L H hs T over train.seq_len
    assert plan.flops_per_token == 3 * (2 * plan.params + attention)
    assert plan.lr == pytest.approx(0.03 * (8 / 2) ** 0.5)  # depth 2 = num_hidden_layers
    assert plan.depth_ratio == 4
    gpt2 = hf_scale(GPT2, 32)  # a tied head costs a matmul: counted twice
    assert gpt2.params == sum(p.numel() for p in _model(GPT2).parameters()) + 512 * 32
    # an MoE counts what a token uses: 2 of the 4 experts of each bank
    mixtral = _model(MIXTRAL)
    bank = sum(p.numel() for n, p in mixtral.named_parameters() if ".experts." in n)
    assert bank == 2 * 4 * (64 * 32 + 32 * 32)  # 2 layers of 4 experts (gate-up and down)
    total = sum(p.numel() for p in mixtral.parameters())
    assert hf_scale(MIXTRAL, 32).params == total - bank // 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.hf_config": LLAMA, "model.depth": 4}, "model.depth is a setting of hyperp's own"),
        ({"model.hf_config": LLAMA, "model.hf": "x"}, "not both"),
        ({"model.hf": "/no/such/dir"}, "not a directory holding config.json"),
        ({"model.hf_config": {**LLAMA, "auto_map": {}}}, "auto_map"),
        ({"model.hf_config": {"vocab_size": 512}}, "needs a 'model_type'"),
        ({"model.hf_config": {"model_type": "nosuch"}}, "not a model type"),
        ({"model.hf_config": {**LLAMA, "vocab_size": 300}}, "smaller than the data's"),
        ({"model.hf_config": LLAMA, "train.init_from": "w"}, "model.hf directory"),
        ({"model.hf_config": LLAMA, "optim.method": "muon", "optim.base_depth": 8}, "d0/d"),
    ],
)
def test_settings_that_cannot_apply_are_refused_in_one_line(corpus, overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        hf_run(corpus, **overrides).resolve(512).plan()
    assert "\n" not in str(error.value)


def test_the_command_line_takes_a_toml_table_and_dry_run_lists_what_does_not_apply(
    corpus, tmp_path, capsys
):
    toml = tmp_path / "gpt2.toml"
    toml.write_text(
        "[model.hf_config]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in GPT2.items())
    )
    assert main(["train", "--dry-run", "--config", str(toml), "--data.path", str(corpus),
                 "--train.steps=8"]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert "gpt2 causal LM (Hugging Face), depth 2 (num_hidden_layers), width 32" in shown
    assert shown.count("not applicable to this model:") == 5
    table = json.dumps({**GPT2, "n_layer": 3})  # a table on the command line is JSON
    assert main(["train", "--dry-run", "--config", str(toml), "--data.path", str(corpus),
                 "--train.steps=8", "--model.hf_config", table]) == 0  # fmt: skip
    assert "depth 3 (num_hidden_layers)" in capsys.readouterr().out


def test_resume_is_bit_exact_and_needs_no_source_directory(corpus, tmp_path):
    torch.manual_seed(3)
    source = tmp_path / "llama"
    _model(LLAMA).save_pretrained(source)  # weights to start from
    config = hf_run(corpus, **{"model.hf": str(source), **PIN_FP32})
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(config, straight)
    assert train(config, halves, stop_after=4).status == "interrupted"
    # the run starts from the directory's weights: the first loss is theirs
    from hyperp.data import TrainLoader, open_corpus
    from hyperp.hf import CausalLM, build_hf_model

    inputs, targets = next(TrainLoader(open_corpus(corpus).train, batch_size=8, context=32))
    with torch.no_grad():
        first = CausalLM(build_hf_model(source))(inputs, targets).lm_loss.item()
    assert logged(straight)[1] == pytest.approx(first, rel=1e-6)
    shutil.rmtree(source)  # a started run no longer reads it
    assert train(config, halves).status == "finished"
    assert_same_weights(straight, halves)
    assert logged(straight) == logged(halves)
    # a model.hf_config table is the user's own setting: a changed one is not resumed
    table = hf_run(corpus, **{"model.hf_config": LLAMA, **PIN_FP32, "train.steps": 4})
    train(table, tmp_path / "table", stop_after=2)
    changed = {"model.hf_config": {**LLAMA, "intermediate_size": 32}, **PIN_FP32}
    with pytest.raises(ValueError, match="different config"):
        train(hf_run(corpus, **{**changed, "train.steps": 4}), tmp_path / "table")


def test_eval_generate_and_export_of_a_hf_run(corpus, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from hyperp.serve.export import export_run
    from hyperp.serve.run import load_run

    out = tmp_path / "run"
    train(hf_run(corpus, **{"model.hf_config": GPT2, "train.steps": 4}), out)
    capsys.readouterr()  # what training printed
    assert main(["eval", str(out), "--data", str(corpus), "--json", "--no-progress"]) == 0
    assert 2 < json.loads(capsys.readouterr().out)["data"]["loss"] < 6.3
    loaded = load_run(out, device="cpu")
    prompt = torch.tensor([loaded.encode("def main(")])
    greedy = [int(t[0]) for t in loaded.model.stream(prompt, 12, temperature=0)]
    tokens = prompt  # the same tokens without the cache: one full forward per token
    for _ in range(12):
        next_token = loaded.model(tokens).logits[:, -1].argmax(-1)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
    assert greedy == tokens[0, prompt.shape[1] :].tolist()
    assert main(["generate", str(out), "--prompt", "def ", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    result = export_run(out, tmp_path / "export")
    assert result.architecture == "GPT2LMHeadModel" and not result.remote_code
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    with torch.no_grad():
        torch.testing.assert_close(exported(prompt).logits, loaded.model(prompt).logits)


@pytest.mark.parametrize("hf", [LLAMA, MIXTRAL], ids=["llama", "mixtral-moe"])
def test_activation_checkpointing_of_a_hf_model_gives_equal_losses(corpus, tmp_path, hf):
    short = {"model.hf_config": hf, "train.steps": 4, "train.checkpoint_every": 0}
    train(hf_run(corpus, **short), tmp_path / "plain")
    checkpointed = hf_run(corpus, **short, **{"train.activation_checkpointing": True})
    train(checkpointed, tmp_path / "checkpointed")
    assert logged(tmp_path / "plain") == logged(tmp_path / "checkpointed")
    # and it recomputes: backward runs each decoder layer's modules once more
    from hyperp.hf import CausalLM, build_hf_model, decoder_layers

    tokens = torch.randint(0, 512, (2, 9))
    for checkpointed, runs in ((False, 1), (True, 2)):
        model = CausalLM(build_hf_model(hf))
        if checkpointed:
            model.checkpoint_layers()
        calls = []
        attention = next(decoder_layers(model.hf)[0].children())
        attention.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        model(tokens[:, :-1], tokens[:, 1:]).loss.backward()
        assert len(calls) == runs, (checkpointed, len(calls))


@pytest.mark.parametrize("hf", [LLAMA, GPT2], ids=["llama", "gpt2-conv1d-tied"])
def test_a_hf_model_compiles_with_eager_results(hf):
    from hyperp.hf import CausalLM, build_hf_model

    torch.manual_seed(0)
    tokens = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    assert_compiles_like_eager(CausalLM(build_hf_model(hf)), tokens)


@pytest.mark.slow
def test_compiled_training_of_a_hf_model_tracks_eager(corpus, tmp_path, monkeypatch):
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    short = {"model.hf_config": LLAMA, "train.steps": 3, "train.checkpoint_every": 0, **PIN_FP32}
    train(hf_run(corpus, **short), tmp_path / "eager")
    train(hf_run(corpus, **short, **{"train.compile": True}), tmp_path / "compiled")
    eager, compiled = logged(tmp_path / "eager"), logged(tmp_path / "compiled")
    assert sorted(compiled) == [1, 2, 3]
    for step, loss in eager.items():  # inductor fuses elementwise work: other rounding
        assert compiled[step] == pytest.approx(loss, rel=1e-4), step


# A Mixtral without its balancing loss: that loss is per process in transformers (a batch's
# routing statistics), so with it several processes train another objective than one.
MIXTRAL_NO_AUX = {**MIXTRAL, "output_router_logits": False}


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("strategy", "nproc", "hf", "extra"),
    [
        ("fsdp", 2, LLAMA, ["--train.activation_checkpointing=true"]),
        ("ddp", 2, MIXTRAL_NO_AUX, []),
        ("hsdp", 4, LLAMA, ["--train.shard_size=2"]),
    ],
    ids=["fsdp2-checkpointed-llama", "ddp-mixtral", "hsdp-llama"],
)
def test_several_processes_and_one_agree_through_the_trainer(
    corpus, tmp_path, strategy, nproc, hf, extra
):
    # against one plain process, from a TOML table, the several-process run from the command line
    toml = tmp_path / "model.toml"
    toml.write_text(
        "[model.hf_config]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in hf.items())
    )
    settings = {**RUN, **PIN_FP32, "data.path": str(corpus)}
    args = ["--config", str(toml)] + [f"--{k}={v}" for k, v in settings.items()]
    reference = tmp_path / "one"
    train(load_config(toml, [a for kv in settings.items() for a in (f"--{kv[0]}", str(kv[1]))]),
          reference)  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               str(nproc), "-m", "hyperp", "train", *args, "--out", str(tmp_path / strategy),
               f"--train.distributed={strategy}", "--train.threads=1", *extra]  # fmt: skip
    done = subprocess.run(command, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert json.loads((tmp_path / strategy / "summary.json").read_text())["processes"] == nproc
    assert_equal_up_to_rounding(reference, tmp_path / strategy, "fp32")


def test_the_documented_llama_toml_plans(corpus, tmp_path, capsys):
    text = (Path(__file__).resolve().parents[1] / "docs" / "own-model.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "llama.toml" in b)
    (tmp_path / "llama.toml").write_text(block)
    assert main(["train", "--dry-run", "--config", str(tmp_path / "llama.toml"),
                 "--data.path", str(corpus)]) == 0  # fmt: skip
    shown = capsys.readouterr().out
    assert "depth 4 (num_hidden_layers), width 256 (hidden_size)" in shown
    assert "300 steps" in shown


def test_a_sweep_plans_hf_runs_through_the_override_path(corpus, tmp_path, capsys):
    toml = tmp_path / "llama.toml"
    toml.write_text(
        "[model.hf_config]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in LLAMA.items())
    )
    (tmp_path / "sweep.toml").write_text(
        f'base = "llama.toml"\nout = "runs"\n[set]\n"data.path" = "{corpus}"\n'
        '"train.steps" = 2\n[axes]\n"optim.base_lr" = [0.01, 0.02]\n"model.hf_config" = '
        f"[{inline(LLAMA)}, {inline({**LLAMA, 'num_hidden_layers': 3})}]\n"
        '[launcher]\nkind = "local"\n'
    )
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("[run, pending]") == 4
    assert shown.count(f"params={hf_params(LLAMA)}") == 2
    assert shown.count(f"params={hf_params({**LLAMA, 'num_hidden_layers': 3})}") == 2


def hf_params(hf) -> int:
    return sum(p.numel() for p in _model(hf).parameters())


def inline(table: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in table.items()) + "}"


def test_a_model_directory_whose_index_points_outside_it_is_refused(corpus, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = _model(LLAMA)
    (tmp_path / "outside").mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "outside" / "w.safetensors"), metadata={"format": "pt"})
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(LLAMA))
    index = {"metadata": {}, "weight_map": {k: "../outside/w.safetensors" for k in state}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    # transformers 5.25 refuses it too, but only when the model is built, after the run
    # directory is taken; hyperp refuses it when the config resolves, before any file
    with pytest.raises(ValueError, match="outside the model directory"):
        AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="not a file beside it") as error:
        train(hf_run(corpus, **{"model.hf": str(directory)}), out)
    assert "model.hf" in str(error.value) and "\n" not in str(error.value)
    assert not out.exists()
