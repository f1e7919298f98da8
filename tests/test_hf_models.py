"""Hugging Face causal LMs (Llama, Qwen3, GPT-2 with Conv1D and a tied head, Mixtral's expert
banks) trained by HyperP: one process and FSDP2 per decoder layer on 2 gloo ranks agree."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hyperp.hf import build_hf_model, decoder_layers, read_hf_config
from training import SPREAD

pytest.importorskip("transformers")

SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
CONFIGS = {
    "llama": {"model_type": "llama", **SMALL, "num_key_value_heads": 1, "intermediate_size": 64},
    "qwen3": {"model_type": "qwen3", **SMALL, "num_key_value_heads": 1, "intermediate_size": 64,
              "head_dim": 16},
    "gpt2": {"model_type": "gpt2", "vocab_size": 96, "n_embd": 32, "n_layer": 2, "n_head": 2,
             "n_positions": 32, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
             "bos_token_id": 0, "eos_token_id": 0},
    "mixtral": {"model_type": "mixtral", **SMALL, "num_key_value_heads": 1,
                "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2},
}  # fmt: skip

_WORKER = r"""
import json, sys, torch, torch.distributed as dist
from hyperp.hf import build_hf_model, shard_hf_model
from hyperp.optim import build_optimizer, role_map

rank, port, configs, out = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.set_num_threads(1)
results = {}
for name, config in configs.items():
    runs = {}
    for sharded in (False, True):
        torch.manual_seed(0)
        model = build_hf_model(config)
        roles = role_map(model)
        if sharded:
            shard_hf_model(model)
        opt = build_optimizer(model, "hyperp", lr=0.02, roles=roles, ns_dtype="fp32")
        # one batch again and again: the loss must fall (memorization), as a sign it trains
        tokens = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(3):
            mine = tokens[rank * 2 : rank * 2 + 2] if sharded else tokens
            loss = model(input_ids=mine, labels=mine).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sharded:
                loss = loss.detach().clone()
                dist.all_reduce(loss)
                loss /= 2
            losses.append(loss.item())
        weights = {n: (p.full_tensor() if sharded else p).detach().clone()
                   for n, p in model.named_parameters()}
        for n, w in weights.items():
            if n.endswith("c_attn.bias"):
                # GPT-2's key bias has a gradient of exactly 0 (softmax ignores a constant per
                # query), so Adam's update of it is the sign of rounding noise: left out.
                q, _, v = w.chunk(3)
                weights[n] = torch.cat([q, v])
        runs[sharded] = (losses, weights)
    # each rank's halves of a batch have as many tokens, so the mean of means is the mean
    one, two = runs[False], runs[True]
    drift = max(((two[1][n] - w).norm() / w.norm()).item() for n, w in one[1].items())
    rel = max(abs(a - b) / abs(a) for a, b in zip(one[0], two[0]))
    results[name] = {"loss_rel": rel, "weight_drift": drift, "losses": one[0],
                     "roles": sorted({v.role.value for v in role_map(model).values()})}
if rank == 0:
    json.dump(results, open(out, "w"))
dist.barrier()
dist.destroy_process_group()
"""


def test_decoder_layers_and_configs():
    model = build_hf_model(CONFIGS["gpt2"])
    assert [type(m).__name__ for m in decoder_layers(model)] == ["GPT2Block"] * 2
    with pytest.raises(ValueError, match="names its own model code"):
        read_hf_config({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}})


@pytest.mark.distributed
def test_one_process_and_fsdp2_on_two_ranks_agree(tmp_path):
    from transformers import CONFIG_MAPPING

    configs = {k: v for k, v in CONFIGS.items() if v["model_type"] in CONFIG_MAPPING}
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    out = tmp_path / "results.json"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), port, json.dumps(configs), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output.decode()[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == set(configs)
    spread = SPREAD["fp32"]
    for name, result in results.items():
        assert result["loss_rel"] <= spread.loss, (name, result)
        assert result["weight_drift"] <= spread.weights, (name, result)
        assert result["losses"][-1] < result["losses"][0], (name, result)  # it trains
    assert results["llama"]["roles"] == ["embedding", "head", "matrix", "vector"]
    assert "head" not in results["gpt2"]["roles"]  # tied: trained as the embedding


def test_a_local_directory_loads_with_its_weights(tmp_path):
    import torch

    torch.manual_seed(0)
    saved = build_hf_model(CONFIGS["llama"])
    saved.save_pretrained(tmp_path / "llama")
    torch.manual_seed(1)
    loaded = build_hf_model(tmp_path / "llama")
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    (tmp_path / "bare").mkdir()  # a config without weights: initialized as transformers does
    (tmp_path / "bare" / "config.json").write_text(json.dumps(CONFIGS["llama"]))
    fresh = build_hf_model(tmp_path / "bare")
    assert not torch.equal(fresh.lm_head.weight, saved.lm_head.weight)
