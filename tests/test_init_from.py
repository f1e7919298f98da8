"""train.init_from: a run starts from safetensors weights (an export, a transformers
checkpoint, our own state dict); a mismatch is one line naming the first tensor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import hyperp
from hyperp.cli import main
from hyperp.data import data_vocab_size
from hyperp.model import ModelConfig, Transformer
from hyperp.train import load_config
from hyperp.train.initial import check_initial_weights, load_initial_weights
from hyperp.train.trainer import train
from serve_support import trained_run
from training import TINY, radii

pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _logits(model, vocab_size, length=24):
    tokens = torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("variant", ["dense_plain", "dense_llama", "moe"])
def test_init_from_an_export_reproduces_its_logits(variant, tmp_path):
    # Qwen3 (a logit multiplier folded into lm_head), Llama (the softmax scale folded into
    # q_proj) and the remote-code layout (MoE): the multipliers come back out exactly.
    from hyperp.serve.export import export_run

    ours = hyperp.load_run(trained_run(variant), device="cpu")
    export_run(trained_run(variant), tmp_path / "hf")
    config = ours.config.model
    torch.manual_seed(1)  # a different fresh init, which the load must replace entirely
    model = Transformer(config).eval()
    load_initial_weights(model, tmp_path / "hf", config)
    expected = _logits(ours.model, config.vocab_size)
    torch.testing.assert_close(_logits(model, config.vocab_size), expected, rtol=0, atol=1e-5)


def test_a_transformers_llama_loads_and_computes_its_function(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(hf_config).eval()
    llama.save_pretrained(tmp_path / "llama")  # tied: no lm_head.weight in the file
    config = ModelConfig(
        depth=2, width=64, head_dim=16, n_heads=4, n_kv_heads=2, vocab_size=96, context=32,
        mlp_ratio=2.0, qk_norm=False, gated_attention=False, rope_base=10000.0, norm_eps=1e-6,
    )  # fmt: skip
    model = Transformer(config).eval()
    load_initial_weights(model, tmp_path / "llama", config)
    torch.testing.assert_close(_logits(model, 96), _logits(llama, 96), rtol=0, atol=1e-5)


def test_the_spheres_take_their_radii_from_the_loaded_weights(corpus, tmp_path):
    """... and a resume takes everything from its checkpoint: the start file may be gone."""
    values = {**TINY, "data.path": str(corpus), "train.steps": 4, "train.checkpoint_every": 2}
    config = load_config(None, values)
    config = config.resolve(data_vocab_size(config))
    torch.manual_seed(5)
    source = Transformer(config.model)
    with torch.no_grad():  # radii no fresh init has: every matrix 3x its init norm
        for name, param in source.named_parameters():
            if param.ndim >= 2 and name != "embedding.weight":
                param.mul_(3.0)
    state = {name: t.contiguous() for name, t in source.state_dict().items()}
    safetensors_torch.save_file(state, str(tmp_path / "start.safetensors"))
    start = load_config(None, {**values, "train.init_from": str(tmp_path / "start.safetensors")})
    assert train(start, tmp_path / "run", stop_after=2).status == "interrupted"
    (tmp_path / "start.safetensors").unlink()
    assert train(start, tmp_path / "run").status == "finished"
    got = radii(tmp_path / "run")
    assert set(got) == {n for n, p in state.items() if p.ndim >= 2 and n != "embedding.weight"}
    for name, radius in got.items():
        torch.testing.assert_close(radius, state[name].norm().reshape(1), rtol=1e-6, atol=0)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["init_from"].endswith("start.safetensors")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model.depth": 3}, "no tensor model.layers.2.input_layernorm.weight (this model's "
         "blocks.2.attn_norm.weight)"),
        ({"model.width": 64}, "model.embed_tokens.weight has shape [512, 32] but this model's "
         "embedding.weight is [512, 64]"),
        ({"model.depth": 1}, "tensors this model does not have, first model.layers.1."),
        ({"model.qk_norm": True}, "no tensor model.layers.0.self_attn.q_norm.weight"),
        ({"model.gated_attention": True}, "holds a Llama/Qwen3 checkpoint, but this model has "
         "gated attention"),
    ],
)  # fmt: skip
def test_a_mismatch_is_one_line_naming_the_first_tensor(
    override, message, corpus, tmp_path, capsys
):
    from hyperp.serve.export import export_run

    export = tmp_path / "hf"
    export_run(trained_run("dense_llama"), export)
    out = tmp_path / "run"
    values = {**TINY, "data.path": str(corpus), "model.context": 48, "train.steps": 1}
    values.update({"model.gated_attention": False, "model.qk_norm": False, **override})
    argv = ["train", "--out", str(out), "--train.init_from", str(export)]
    argv += [f"--{key}={value}" for key, value in values.items()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # stopped before the run directory was made


def test_missing_and_corrupt_weights_are_one_line(tmp_path):
    config = ModelConfig(depth=1, width=32, head_dim=16, vocab_size=32, context=8)
    with pytest.raises(ValueError, match="no such file or directory"):
        check_initial_weights(tmp_path / "nowhere", config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model.safetensors or model.safetensors.index.json"):
        check_initial_weights(tmp_path / "empty", config)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        check_initial_weights(tmp_path / "bad.safetensors", config)


def test_an_index_cannot_lead_outside_its_directory(tmp_path):
    # A secret beside the directory, in the layout the model wants: a reader that joins the
    # index's names to the directory loads it.
    config = ModelConfig(depth=1, width=32, head_dim=16, vocab_size=32, context=8)
    secret = {n: t.contiguous() for n, t in Transformer(config).state_dict().items()}
    safetensors_torch.save_file(secret, str(tmp_path / "secret.safetensors"))
    directory = tmp_path / "download"
    directory.mkdir()
    index = {"weight_map": {name: "../secret.safetensors" for name in secret}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    # Positive control: plain safetensors, following the index, reads the file outside.
    control = (
        "import json, sys; from safetensors.torch import load_file; "
        "d = sys.argv[1]; m = json.load(open(d + '/model.safetensors.index.json'))['weight_map'];"
        "print(len(load_file(d + '/' + next(iter(m.values())))))"
    )
    fired = subprocess.run([sys.executable, "-c", control, str(directory)], capture_output=True)
    assert fired.returncode == 0 and int(fired.stdout) == len(secret)
    with pytest.raises(ValueError, match="which is not a file beside it"):
        check_initial_weights(directory, config)
