"""``hyperp export``: Hugging Face directories that ``transformers`` loads and that compute our
function (logits within 1e-4 in fp32, the same greedy continuation as ``hyperp generate``)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys

import pytest
import torch

import hyperp
from hyperp.cli import main
from serve_support import trained_run
from support import subprocess_env

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")

# variant -> (architecture, needs remote code)
EXPECTED = {
    "dense_ga": ("HyperpForCausalLM", True),
    "dense_plain": ("Qwen3ForCausalLM", False),
    "dense_llama": ("LlamaForCausalLM", False),
    "moe": ("HyperpForCausalLM", True),
}
PROMPT = "def parse_args(self"


def load_hf(directory, remote: bool, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=remote, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=remote)
    return model.eval(), tokenizer


@pytest.mark.parametrize("variant", EXPECTED)
def test_export_round_trip(variant, tmp_path, capsys):
    run_dir = trained_run(variant)
    out = tmp_path / "hf"
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    architecture, remote = EXPECTED[variant]
    assert architecture in capsys.readouterr().out
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert (out / "modeling_hyperp.py").is_file() == remote
    assert "trust_remote_code=True" in (out / "README.md").read_text() or not remote
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture]

    ours = hyperp.load_run(run_dir, device="cpu")
    model, tokenizer = load_hf(out, remote)
    assert type(model).__name__ == architecture
    # Logits over a whole context of real text.
    text = (run_dir.parent.parent / "corpus" / "tokenizer.json").read_text()[:2000]
    tokens = torch.tensor([ours.encode(text)[: ours.config.model.context]])
    with torch.no_grad():
        expected = ours.model(tokens).logits
        got = model(tokens).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)

    # The tokenizer starts a document as hyperp does, and greedy decoding agrees with ours.
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids[0].tolist() == ours.encode(PROMPT)
    generated = model.generate(ids, max_new_tokens=25, do_sample=False)
    hf_text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    assert main(["generate", str(run_dir), "--prompt", PROMPT, "--temperature", "0",
                 "--max-new-tokens", "25", "--device", "cpu"]) == 0  # fmt: skip
    assert capsys.readouterr().out == PROMPT + hf_text + "\n"


def test_bf16_and_sharded_exports_load(tmp_path):
    from hyperp.serve.export import export_run

    run_dir = trained_run("dense_ga")
    ours = hyperp.load_run(run_dir, device="cpu")
    tokens = torch.tensor([ours.encode("import sys\nfrom os import path\n")])
    with torch.no_grad():
        expected = ours.model(tokens).logits

    bf16 = export_run(run_dir, tmp_path / "bf16", dtype="bf16")
    from safetensors import safe_open

    with safe_open(str(bf16.directory / "model.safetensors"), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}  # noqa: SIM118
    model, _ = load_hf(bf16.directory, remote=True, dtype=torch.bfloat16)
    with torch.no_grad():
        got = model(tokens).logits.float()
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()

    sharded = export_run(run_dir, tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((sharded.directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model, _ = load_hf(sharded.directory, remote=True)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, expected, rtol=0, atol=1e-4)


def test_remote_code_loads_offline_in_a_fresh_process(tmp_path):
    run_dir = trained_run("moe")
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "print(float(m(torch.tensor([[0, 5, 9, 11]])).logits.double().sum()))\n"
    )
    env = subprocess_env(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home")
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = hyperp.load_run(run_dir, device="cpu").model(torch.tensor([[0, 5, 9, 11]]))
    assert float(done.stdout.split()[-1]) == pytest.approx(
        float(expected.logits.double().sum()), abs=1e-3
    )


def test_export_refuses_to_overwrite_without_asking(tmp_path, capsys):
    run_dir = trained_run("dense_plain")
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(run_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(run_dir), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


def test_an_export_has_the_users_modes_and_keeps_its_checkpoint(tmp_path, capsys):
    from hyperp.fileio import UMASK

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run("dense_plain"), run_dir)
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    assert "the checkpoint of step 10 is kept from pruning" in capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~UMASK
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~UMASK, path.name
    assert (run_dir / "checkpoints" / "step_00000010" / "KEEP").is_file()
