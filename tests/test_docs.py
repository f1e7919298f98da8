"""The documentation against the code: every citation of the method document names a section
that exists in docs/method.md, in one form (``docs/method.md §2.3``); the README's first
commands run from a fresh clone."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from support import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
METHOD_DOC = ROOT / "docs" / "method.md"
NUMBER = r"\d+(?:\.\d+)?"
# A citation: the document's path, then optional sections "§2.3", "§1.1, §1.7", "§2.1 and §2.5".
CITATION = re.compile(rf"docs/method\.md((?: §{NUMBER}(?:(?:,| and|, and) §{NUMBER})*)?)")
# The document's old name and short form, written so that this file does not match itself.
OLD_FORM = re.compile(r"\b" + "METHOD" + r"(?:\.md\b| (?:sections? )?\d)")


def method_sections() -> set[str]:
    """Section numbers of docs/method.md from its headings: "## 2. Optimizers" -> "2"."""
    headings = re.findall(rf"^#{{2,3}} ({NUMBER})\.? ", METHOD_DOC.read_text(), re.MULTILINE)
    return set(headings)


def cited_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "REPORT.md"]
    for folder, pattern in (("src", "*.py"), ("src", "*.toml"), ("docs", "*.md")):
        files += sorted((ROOT / folder).rglob(pattern))
    for folder in ("studies", "tests", "benchmarks"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".toml"))
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def citations(text: str) -> list[tuple[int, str]]:
    """(line, section) for every section cited in ``text``; "" for a citation of the whole file."""
    found = []
    for match in CITATION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found += [(line, s) for s in re.findall(NUMBER, match.group(1))] or [(line, "")]
    return found


def test_method_document_has_the_sections_the_code_was_written_against():
    sections = method_sections()
    for expected in ("1", "1.1", "1.7", "2", "2.1", "2.2", "2.3", "2.4", "2.5", "3", "3.1"):
        assert expected in sections
    for expected in ("4", "4.1", "5", "6", "6.1", "6.5"):
        assert expected in sections


def test_every_method_citation_names_an_existing_section():
    sections = method_sections()
    bad, count = [], 0
    for path in cited_files():
        for line, section in citations(path.read_text(encoding="utf-8")):
            count += 1
            if section and section not in sections:
                bad.append(f"{path.relative_to(ROOT)}:{line}: §{section}")
    assert count > 50, "the citation pattern no longer finds the code's references"
    assert not bad, "citations of sections docs/method.md does not have:\n" + "\n".join(bad)


def test_no_citation_uses_the_old_form():
    old = []
    for path in cited_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OLD_FORM.search(line):
                old.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not old, "cite the method as docs/method.md §N:\n" + "\n".join(old)


@pytest.mark.parametrize(
    "text, found",
    [
        ("see docs/method.md §2.3.", [(1, "2.3")]),
        ("(docs/method.md §1.1, §1.7)", [(1, "1.1"), (1, "1.7")]),
        ("docs/method.md §2.1 and §2.5", [(1, "2.1"), (1, "2.5")]),
        ("x\ndocs/method.md for the method", [(2, "")]),
        ("docs/method.md §9.9", [(1, "9.9")]),
    ],
)
def test_citation_pattern(text, found):
    assert citations(text) == found


def test_old_form_pattern():
    for old in ("M.md 2.3", "M 4", "(M.md)", "M.md section 6", "M.md 1.1, 1.7"):
        assert OLD_FORM.search(old.replace("M", "METHOD")), old
    for fine in ("METHODS = (", "BOOTSTRAP_METHOD = 1", "docs/method.md §2", "{METHOD}"):
        assert not OLD_FORM.search(fine), fine


# -- the README's first two commands, from a fresh clone --------------------------------------


def readme_quick_start() -> list[str]:
    """The commands of the README's first bash block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readmes_setup_and_test_command():
    setup, tests = readme_quick_start()
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ")
    assert "python3 -m venv .venv" in ci and "pip install -q torch==2.13.0" in ci
    assert ci.rstrip().splitlines()[-1] == tests  # CI's last command is the README's second


def test_readmes_first_command_finishes_in_a_fresh_clone(tmp_path):
    """The hyperp part of the README's first command, in a clone of this repository (the
    virtual environment is the one running the tests), on a 500 KB slice of the corpus."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    setup = readme_quick_start()[0]
    command = shlex.split(next(p for p in setup.split("&&") if "bin/hyperp" in p))
    assert command[:2] == [".venv/bin/hyperp", "train"]
    shrink = ["--data.max_bytes", "500000", "--data.vocab_size", "1024", "--train.steps", "10"]
    env = subprocess_env(HYPERP_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(clone / "src"), env["PYTHONPATH"]])
    done = subprocess.run(
        [sys.executable, "-m", "hyperp", *command[1:], *shrink],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("finished:"), done.stdout[-2000:]
    (run,) = (clone / "runs").glob("smoke-*")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 10


# -- docs/method.md §3.2: the start-up loss of every preset -------------------------------------


@pytest.mark.parametrize("preset", ["smoke", "tiny", "d8_dense"])
def test_startup_loss_of_every_preset_is_ln_v_plus_half_the_logit_variance(preset):
    """At step 0 the final norm hands the head vectors of RMS 1, the logits have std
    sigma_head * sqrt(n) and the loss is about ln V + s^2 / 2 (docs/method.md §3.2)."""
    import math

    import torch

    from hyperp.model import Transformer
    from hyperp.train import load_config

    config = load_config(preset, {"model.context": 64}).resolve(8192)
    torch.manual_seed(0)
    model = Transformer(config.model)
    tokens = torch.randint(0, 8192, (4, 65))
    with torch.no_grad():
        out = model(tokens[:, :-1], tokens[:, 1:])
    spread = out.logits.float().std(dim=-1).mean().item()
    predicted = config.model.head_std * math.sqrt(config.model.width)
    assert spread == pytest.approx(predicted, rel=0.05)
    assert out.lm_loss.item() == pytest.approx(math.log(8192) + spread**2 / 2, abs=0.1)


def test_every_preset_is_covered_by_the_startup_loss_check():
    """d8_moe has d8_dense's width, head and head rule, so the same logit scale; building its
    64 experts per block (about 0.8B parameters) would not fit the suite's budget."""
    from hyperp.train import load_config

    presets = {p.stem for p in (ROOT / "src/hyperp/configs").glob("*.toml")}
    assert presets == {"smoke", "tiny", "d8_dense", "d8_moe"}
    dense, moe = load_config("d8_dense").model, load_config("d8_moe").model
    assert (moe.width, moe.head_std, moe.head_init_rule) == (
        dense.width,
        dense.head_std,
        dense.head_init_rule,
    )
