"""``loss-service filter``: a rule parsed (never run as code), every file decided by the library's
values, unreadable files listed with their error, and a resumed run that scores nothing twice."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import losses
from service.cli import main as cli_main
from service.client.curate import RuleError, parse_rule

from .conftest import degrade, to_tensor


@pytest.mark.parametrize(
    "rule, scores, kept",
    [
        ("niqe < 5", {"niqe": 4.9}, True),
        ("niqe < 5", {"niqe": 5.0}, False),
        ("niqe <= 5", {"niqe": 5.0}, True),
        ("5 > niqe", {"niqe": 4.0}, True),  # the number first: the comparison mirrored
        ("niqe < 5 and clipiqa > 0.6", {"niqe": 4.0, "clipiqa": 0.5}, False),
        ("niqe < 5 or clipiqa > 0.6", {"niqe": 6.0, "clipiqa": 0.7}, True),
        ("not (niqe >= 5) and clipiqa != 0", {"niqe": 4.0, "clipiqa": 0.2}, True),
        ("niqe < 5 or niqe > 8 and clipiqa > 0.9", {"niqe": 9.0, "clipiqa": 0.5}, False),  # and binds tighter than or
        ("niqe < 1e3", {"niqe": None}, False),  # a value that was not finite passes no comparison
    ],
)
def test_a_rule_decides_as_written(rule, scores, kept):
    assert parse_rule(rule).test(scores) is kept


@pytest.mark.parametrize(
    "rule, says",
    [
        ("", "empty"),
        ("niqe <", "expected number"),
        ("__import__('os').system('true')", "cannot read"),
        ("niqe < 5 and", "expected word"),
        ("(niqe < 5", "expected \\)"),
        ("niqe ~ 5", "cannot read '~ 5'"),
        ("and < 5", "expected a metric name"),
    ],
)
def test_a_rule_that_does_not_parse_is_refused_saying_where(rule, says):
    with pytest.raises(RuleError, match=says):
        parse_rule(rule)


def test_filter_keeps_by_the_librarys_values_lists_the_unreadable_and_resumes(vgg16_server, photos, tmp_path, capsys):
    folder = tmp_path / "crawl"
    folder.mkdir()
    sharp = [photo[:200, :200] for photo in photos]
    blurred = [degrade(image, seed) for seed, image in enumerate(sharp)]
    for index, image in enumerate([*sharp, *blurred]):
        Image.fromarray(image).save(folder / f"{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / ".hidden.png").write_bytes(b"not an image")  # hidden files are not part of the set
    values = {f"{i}.png": losses.score(to_tensor(image), metrics=["niqe"])["niqe"].item() for i, image in enumerate([*sharp, *blurred])}
    threshold = float(np.median(list(values.values())))
    manifest, counts = tmp_path / "manifest.csv", tmp_path / "counts.json"
    argv = ["filter", str(folder), "--keep", f"niqe < {threshold!r}", "--url", vgg16_server.url, "--manifest", str(manifest)]
    assert cli_main([*argv, "--json", str(counts), "--quiet"]) == 1  # a file could not be read
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(manifest.open())}
    assert set(rows) == {*values, "broken.png"}
    for name, value in values.items():
        assert float(rows[name]["niqe"]) == pytest.approx(value, rel=1e-9)
        assert rows[name]["decision"] == ("kept" if value < threshold else "dropped")
    assert rows["broken.png"]["decision"] == "unreadable" and "415" in rows["broken.png"]["error"], rows["broken.png"]
    summary = json.loads(counts.read_text())
    assert (summary["kept"], summary["dropped"], summary["unreadable"], summary["files"]) == (3, 3, 1, 7)
    assert "kept 3, dropped 3, unreadable 1 of 7" in capsys.readouterr().err

    (folder / "broken.png").unlink()
    Image.fromarray(sharp[0][:, ::-1].copy()).save(folder / "new.png")
    assert cli_main([*argv, "--resume", "--quiet"]) == 0
    again = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(manifest.open())}
    assert set(again) == {*values, "new.png"} and all(again[name] == rows[name] for name in values)
    assert "(6 from the manifest)" in capsys.readouterr().err  # only the new file was scored

    everything = max(values.values()) + 1.0  # another threshold: decided anew from the stored scores
    argv[argv.index("--keep") + 1] = f"niqe < {everything!r}"
    assert cli_main([*argv, "--resume", "--quiet"]) == 0
    final = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(manifest.open())}
    assert {row["decision"] for row in final.values()} == {"kept"} and final["0.png"]["niqe"] == rows["0.png"]["niqe"]
    assert "kept 7, dropped 0, unreadable 0 of 7 (7 from the manifest)" in capsys.readouterr().err  # none scored again


def test_filter_refuses_a_rule_on_a_metric_that_needs_a_reference(vgg16_server, tmp_path, capsys):
    argv = ["filter", str(tmp_path), "--keep", "psnr > 30", "--url", vgg16_server.url, "--manifest", str(tmp_path / "m.csv")]
    assert cli_main(argv) == 2
    assert "no-reference image metrics" in capsys.readouterr().err and not (tmp_path / "m.csv").exists()
