"""``hyperp prepare --max-bytes``: a quick look at a large tree reads its inputs in order only
until their text reaches the cap (as the trainer's data.max_bytes does for the built-in corpus)."""

from __future__ import annotations

import json

from hyperp.cli import main


def write_tree(directory, files: int, size: int) -> None:
    directory.mkdir()
    for index in range(files):
        words = " ".join(f"word{(index * 7 + k) % 97}" for k in range(size // 8))
        (directory / f"doc{index:03d}.txt").write_text(words[:size] + "\n")


def characters(out) -> int:
    splits = json.loads((out / "meta.json").read_text())["splits"]
    return splits["train"]["characters"] + splits["val"]["characters"]


def test_max_bytes_caps_what_is_read(tmp_path, capsys):
    write_tree(tmp_path / "tree", files=40, size=2000)
    common = ["--vocab-size", "300", "--val-fraction", "0.1", "--quiet"]
    assert main(["prepare", str(tmp_path / "tree"), "--out", str(tmp_path / "all"), *common]) == 0
    capped = ["--out", str(tmp_path / "capped"), "--max-bytes", "10000", *common]
    assert main(["prepare", str(tmp_path / "tree"), *capped]) == 0
    sizes = [path.stat().st_size for path in (tmp_path / "tree").iterdir()]  # ASCII text
    whole, cut = characters(tmp_path / "all"), characters(tmp_path / "capped")
    assert whole == sum(sizes) > 50_000
    assert 10_000 <= cut < 10_000 + max(sizes)  # the document that crosses the cap is the last
    # The same cap reads the same documents again.
    again = ["--out", str(tmp_path / "again"), "--max-bytes", "10000", *common]
    assert main(["prepare", str(tmp_path / "tree"), *again]) == 0
    assert characters(tmp_path / "again") == cut


def test_a_bad_max_bytes_is_one_line(tmp_path, capsys):
    write_tree(tmp_path / "tree", files=2, size=100)
    code = main(
        ["prepare", str(tmp_path / "tree"), "--out", str(tmp_path / "o"), "--max-bytes", "0"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-bytes must be a positive integer" in err[0]
    assert not (tmp_path / "o").exists()
