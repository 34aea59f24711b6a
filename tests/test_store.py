"""The results store and its leaderboard: concurrent writers lose nothing, a corrupt or foreign
database is refused untouched, ``eval --store`` records what the server answered and resumes from
it, and the leaderboard never ranks a Y-channel PSNR against an RGB one."""

from __future__ import annotations

import json
import multiprocessing
import re
import sqlite3
from pathlib import Path

import pytest

from service.cli import main as cli_main
from service.client.report import leaderboard
from service.client.store import ResultsStore, Row, StoreError, conventions_hash

from .servers import png_bytes, random_image


def record(y_channel: bool = False, crop_border: int = 0, sha: str = "a" * 64) -> dict:
    """A conventions record in the server's shape, for psnr."""
    return dict(
        version="1",
        precision="fp32",
        pretrained=True,
        pixels={"data_range": "[0, 1]"},
        metrics={"psnr": dict(options=dict(crop_border=crop_border, y_channel=y_channel), lower_is_better=False, backbones=[], weights=[])},
        weights={"vgg16": dict(file="vgg16.pth", sha256=sha)},
        date="2026-12-02T00:00:00+00:00",
    )


def _write_many(path: str, writer: int, batches: int, per_batch: int) -> None:
    conventions = record()
    digest = conventions_hash(conventions)
    with ResultsStore(path) as store:
        for batch in range(batches):
            rows = [Row(f"model{writer}", "set", 4, f"img{batch}-{k}", "psnr", 30.0 + k, digest) for k in range(per_batch)]
            store.add(rows, conventions)


def test_two_processes_writing_one_store_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "results.db")
    ResultsStore(path).close()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(path, writer, 40, 25)) for writer in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    with ResultsStore(path) as store:
        rows = store.rows()
        assert len(rows) == 2 * 40 * 25
        assert {(r.model, r.image) for r in rows} == {(f"model{w}", f"img{b}-{k}") for w in range(2) for b in range(40) for k in range(25)}
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_tables_and_the_query_the_readme_shows_are_the_stores(tmp_path):
    """Users query the store with SQL of their own: the README's tables are SQLite's own text of
    a new store's schema, and its example query runs and gives one mean per conventions hash."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### A results store") :]
    tables, query = re.findall(r"```sql\n(.*?)```", section, re.S)[:2]
    with ResultsStore(tmp_path / "r.db") as store:
        listed = [sql + ";" for (sql,) in store.db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY rowid")]
        assert "\n".join(listed) == tables.strip()
        for digest, value in (("a", 30.0), ("a", 32.0), ("b", 0.5)):
            conventions = {"psnr": digest}
            row = Row("edsr", "Set5", 4, f"{value}", "psnr", value, conventions_hash(conventions))
            store.add([row], conventions)
        store.add([Row("edsr", "Set5", 4, "(set)", "psnr", 99.0, conventions_hash({"psnr": "a"}))], {"psnr": "a"})
        means = {row[4]: row[5:] for row in store.db.execute(query)}
    assert means == {conventions_hash({"psnr": "a"}): (31.0, 2), conventions_hash({"psnr": "b"}): (0.5, 1)}


def test_a_corrupt_or_foreign_database_is_refused_and_left_as_it_was(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not sqlite at all " * 64)
    with pytest.raises(StoreError, match="not a loss-service results store"):
        ResultsStore(corrupt)
    assert corrupt.read_bytes() == b"not sqlite at all " * 64
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.execute("INSERT INTO notes VALUES ('keep me')")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="another application"):
        ResultsStore(foreign)
    assert foreign.read_bytes() == before
    assert sqlite3.connect(foreign).execute("SELECT text FROM notes").fetchall() == [("keep me",)]


def test_the_leaderboard_separates_a_y_and_an_rgb_psnr_and_says_why(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        for conventions, values in (
            (record(y_channel=True, crop_border=4), {"EDSR": 32.1, "SwinIR": 32.9}),
            (record(y_channel=False, crop_border=4), {"EDSR": 30.4}),
            (record(y_channel=True, crop_border=0), {"HAT": 33.5}),
        ):
            digest = conventions_hash(conventions)
            store.add(
                [Row(model, "Set5", 4, f"img{i}", "psnr", value + i / 10, digest) for model, value in values.items() for i in range(3)],
                conventions,
            )
        (board,) = leaderboard.boards(store)
    first, *others = board.groups
    assert [s.label for s in first.standings] == ["SwinIR", "EDSR"]  # higher is better
    assert first.standings[0].mean == pytest.approx(33.0) and first.standings[0].images == 3
    differences = {tuple(group.differs) for group in others}
    assert differences == {("RGB vs Y",), ("crop 0 vs 4",)}
    text = leaderboard.markdown([board])
    assert "Not comparable with the ranking above (this group vs it): RGB vs Y." in text and "crop 0 vs 4" in text
    assert "\\caption{Set5 $\\times$4, psnr (differs: RGB vs Y)}" in leaderboard.latex([board])


def test_a_rerun_a_second_later_hashes_and_ranks_with_the_first(tmp_path):
    """The date is when, not how: two records that differ only in it hash alike, and the re-run's
    rows join the first run's group; any other difference is another hash."""
    first, later = record(), {**record(), "date": "2026-12-02T00:00:01+00:00"}
    assert conventions_hash(first) == conventions_hash(later)
    assert conventions_hash(first) != conventions_hash({**first, "precision": "fp16"})
    with ResultsStore(tmp_path / "r.db") as store:
        store.add([Row("EDSR", "Set5", 4, "img0", "psnr", 32.0, conventions_hash(first))], first)
        store.add([Row("SwinIR", "Set5", 4, "img0", "psnr", 32.5, conventions_hash(later))], later)
        (board,) = leaderboard.boards(store)
    assert len(board.groups) == 1 and [s.label for s in board.groups[0].standings] == ["SwinIR", "EDSR"]


def test_weights_of_another_sha_are_another_group(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        for model, sha in (("A", "a" * 64), ("B", "b" * 64)):
            conventions = record(sha=sha)
            conventions["metrics"]["psnr"]["weights"] = ["vgg16"]  # as a feature metric's would
            store.add([Row(model, "Set5", 4, "img0", "psnr", 30.0, conventions_hash(conventions))], conventions)
        (board,) = leaderboard.boards(store)
    assert len(board.groups) == 2 and board.groups[1].differs[0].startswith("vgg16 weights sha ")


@pytest.fixture(scope="module")
def server(vgg16_server):
    return vgg16_server


def test_eval_store_records_what_the_server_answered_and_resumes_from_it(server, tmp_path, capsys):
    folders = {role: tmp_path / role for role in ("sr", "gt")}
    for folder in folders.values():
        folder.mkdir()
    for index in range(3):
        gt = random_image(24, 32, index)
        (folders["gt"] / f"img{index}.png").write_bytes(png_bytes(gt))
        (folders["sr"] / f"img{index}.png").write_bytes(png_bytes(gt[:, ::-1].copy()))
    db = tmp_path / "results.db"
    args = [
        "eval",
        "--url",
        server.url,
        "--sr",
        f"m={folders['sr']}",
        "--gt",
        str(folders["gt"]),
        "--metrics",
        "psnr,ssim",
        "--dataset",
        "tiny",
        "--scale",
        "2",
        "--store",
        str(db),
        "--out",
        str(tmp_path / "r.csv"),
        "--json",
        str(tmp_path / "r.json"),
        "--quiet",
    ]
    assert cli_main(args) == 0
    answered = {r["image"]: r["scores"] for r in json.loads((tmp_path / "r.json").read_text())["models"]["m"]["results"]}
    with ResultsStore(db) as store:
        stored = {(r.image, r.metric): r.value for r in store.rows()}
        (record_stored,) = store.conventions().values()
    assert stored == {(image, metric): value for image, scores in answered.items() for metric, value in scores.items()}
    assert record_stored["metrics"]["psnr"]["options"] == {"crop_border": 0, "y_channel": False}
    (folders["sr"] / "img3.png").write_bytes(png_bytes(random_image(24, 32, 9)))
    (folders["gt"] / "img3.png").write_bytes(png_bytes(random_image(24, 32, 3)))
    capsys.readouterr()
    assert cli_main([*args, "--resume", "--json", str(tmp_path / "r2.json")]) == 0
    assert "skipped (resume) 3" in capsys.readouterr().err
    with ResultsStore(db) as store:
        assert len(store.rows()) == 8
    assert cli_main(["report", "--store", str(db), "--markdown", str(tmp_path / "board.md")]) == 0
    assert "## tiny ×2 · psnr ↑" in (tmp_path / "board.md").read_text()


def test_eval_with_a_foreign_store_is_one_line_and_exit_2(server, tmp_path, capsys):
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE x (a)").connection.commit()
    (tmp_path / "sr").mkdir()
    (tmp_path / "gt").mkdir()
    assert (
        cli_main(
            [
                "eval",
                "--url",
                server.url,
                "--sr",
                str(tmp_path / "sr"),
                "--gt",
                str(tmp_path / "gt"),
                "--store",
                str(foreign),
                "--out",
                str(tmp_path / "r.csv"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "another application" in capsys.readouterr().err


def test_a_training_run_stands_by_its_best_step_and_draws_its_curve(tmp_path):
    conventions = record(y_channel=True)
    digest = conventions_hash(conventions)
    means = {0: 27.0, 1000: 29.5, 2000: 30.25, 3000: 30.0}  # the best step is not the last
    with ResultsStore(tmp_path / "r.db") as store:
        store.add(
            [
                Row("run", "val", 2, f"{i:05d}", "psnr", mean + (i - 1) * 0.5, digest, step=step)
                for step, mean in means.items()
                for i in range(3)
            ],
            conventions,
        )
        (board,) = leaderboard.boards(store)
        (curve,) = leaderboard.curves(store)
    (standing,) = board.groups[0].standings
    assert standing.label == "run (step 2000, best of 4)" and standing.mean == pytest.approx(30.25)
    assert curve.points == [(step, pytest.approx(mean)) for step, mean in means.items()] and curve.best[0] == 2000
    page = leaderboard.curves_html([curve])
    assert page.count("<svg") == 1 and "best: step 2000" in page


def fid_record(convention: str) -> dict:
    record = record_of_metric("fid", dict(convention=convention, subsets=100), lower_is_better=True)
    return record


def record_of_metric(metric: str, options: dict, lower_is_better: bool) -> dict:
    base = record()
    base["metrics"] = {metric: dict(options=options, lower_is_better=lower_is_better, backbones=[], weights=[])}
    return base


def test_fid_of_two_conventions_is_never_ranked_together_and_the_board_says_which(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        for convention, values in (("torch-fidelity", {"A": 20.0, "B": 25.0}), ("clean-fid", {"C": 18.0})):
            conventions = fid_record(convention)
            digest = conventions_hash(conventions)
            store.add([Row(model, "DIV2K", 4, "(set)", "fid", value, digest) for model, value in values.items()], conventions)
        (board,) = leaderboard.boards(store)
    first, other = board.groups
    assert [s.label for s in first.standings] == ["A", "B"] and [s.label for s in other.standings] == ["C"]
    assert other.differs == ["FID clean-fid vs torch-fidelity"]
    assert "FID clean-fid vs torch-fidelity" in leaderboard.markdown([board])


def test_a_mean_over_fewer_images_is_its_own_group_saying_how_many(tmp_path):
    """The validator scored 4 images of Set5 and eval all 5: their means never share a ranking."""
    conventions = record()
    digest = conventions_hash(conventions)
    with ResultsStore(tmp_path / "r.db") as store:
        rows = [Row(model, "Set5", 4, f"img{i}", "psnr", 30.0 + i, digest) for model in ("EDSR", "SwinIR") for i in range(5)]
        rows += [Row("Validated", "Set5", 4, f"img{i}", "psnr", 40.0, digest) for i in range(4)]
        store.add(rows, conventions)
        (board,) = leaderboard.boards(store)
    first, other = board.groups
    assert {s.label for s in first.standings} == {"EDSR", "SwinIR"} and [s.label for s in other.standings] == ["Validated"]
    assert other.differs == ["4 of 5 images"]
    assert "4 of 5 images" in leaderboard.markdown([board])


def test_ties_share_a_rank_and_near_ties_get_the_decimal_that_tells_them_apart(tmp_path):
    conventions = record()
    digest = conventions_hash(conventions)
    with ResultsStore(tmp_path / "r.db") as store:
        values = {"A": 32.94, "B": 32.94, "C": 32.9412, "D": 32.9381, "E": 30.0}
        store.add([Row(model, "Set5", 4, "img0", "psnr", value, digest) for model, value in values.items()], conventions)
        (board,) = leaderboard.boards(store)
    rows = leaderboard._rows(board, board.groups[0])
    assert [(rank, label) for rank, label, _, _ in rows] == [(1, "C"), (2, "A"), (2, "B"), (4, "D"), (5, "E")]
    assert [mean for _, _, mean, _ in rows] == ["32.941", "32.940", "32.940", "32.938", "30.000"]  # 2 decimals would tie C, A, B


def test_the_conventions_hash_is_stable_across_versions_and_key_orders():
    """Stores written by earlier versions must keep grouping new runs with theirs: the hash is the
    sha256 of the record without its date, as compact JSON with sorted keys, whatever the order
    the record's keys arrive in (the server's, or JSON read back from a file)."""
    import hashlib

    conventions = dict(version="1", metrics={"psnr": {"options": {"y_channel": True, "crop_border": 4}}}, date="2026-12-05")
    canonical = b'{"metrics":{"psnr":{"options":{"crop_border":4,"y_channel":true}}},"version":"1"}'
    assert conventions_hash(conventions) == hashlib.sha256(canonical).hexdigest()
    reordered = dict(date="2027-01-01", metrics={"psnr": {"options": {"crop_border": 4, "y_channel": True}}}, version="1")
    assert conventions_hash(reordered) == conventions_hash(conventions)


def test_each_refusal_says_what_to_do(tmp_path):
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (text TEXT)").connection.commit()
    advice = r"\['notes'\]\); give --store a new file or a loss-service results store; nothing was written to it$"
    with pytest.raises(StoreError, match=advice):
        ResultsStore(foreign)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('application', 'something else')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"other\.db: an SQLite database of another application; nothing was written to it"):
        ResultsStore(other)
    newer = tmp_path / "newer.db"
    with ResultsStore(newer) as store:
        store.db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"written by a newer loss-service \(schema 2\); upgrade to read it"):
        ResultsStore(newer)


def test_a_store_whose_meta_has_no_schema_version_opens_as_the_first_schema(tmp_path):
    path = tmp_path / "early.db"
    with ResultsStore(path) as store:
        store.db.execute("DELETE FROM meta WHERE key = 'schema_version'")
    with ResultsStore(path) as store:
        assert store.rows() == []


def test_rows_are_stamped_in_utc_and_found_by_the_images_scored_for_every_metric(tmp_path):
    conventions = record()
    digest = conventions_hash(conventions)
    rows = [Row("m", "Set5", 4, "baby", metric, 30.0, digest) for metric in ("psnr", "ssim")]
    rows += [Row("m", "Set5", 4, "bird", "psnr", 31.0, digest), Row("m", "Set14", 4, "lenna", "psnr", 29.0, digest)]
    with ResultsStore(tmp_path / "s.db") as store:
        assert store.add(rows, conventions) == 4
        (written,) = {w for (w,) in store.db.execute("SELECT written FROM results")}
        assert written.endswith("+00:00")
        assert store.scored_images("m", "Set5", 4, ["psnr", "ssim"]) == {"baby"}
        assert store.scored_images("m", "Set5", 4, ["psnr"]) == {"baby", "bird"}
        assert store.scored_images("m", "Set5", 2, ["psnr"]) == set() and store.scored_images("other", "Set5", 4, ["psnr"]) == set()


def test_a_failed_add_writes_nothing_and_raises_its_own_error(tmp_path):
    """One transaction per add(): a row that cannot be stored rolls back the whole batch, its
    conventions record included, and the caller sees the row's error."""
    conventions = record()
    digest = conventions_hash(conventions)
    with ResultsStore(tmp_path / "s.db") as store:
        with pytest.raises(sqlite3.ProgrammingError):
            unbindable = Row("m", "Set5", 4, "bird", "psnr", object(), digest)
            store.add([Row("m", "Set5", 4, "baby", "psnr", 30.0, digest), unbindable], conventions)
        assert store.rows() == [] and store.conventions() == {}
        with pytest.raises(ValueError, match="^every row of one add\\(\\) carries the hash of the conventions record given with it$"):
            store.add([Row("m", "Set5", 4, "baby", "psnr", 30.0, "another hash")], conventions)
        assert store.add([Row("m", "Set5", 4, "baby", "psnr", 30.0, digest)], conventions) == 1  # the store is usable after both


def test_what_a_number_depends_on_and_how_two_such_differ_in_a_readers_words():
    """``metric_convention`` reads a component (``kid.std``) by its metric's entry, and an older
    record that lists backbones instead of weight files; ``describe_difference`` names every option
    either side sets (one side only included), each weight file, precision, pretrained and pixels."""
    base = record()
    base["metrics"]["kid"] = dict(options=dict(subset_size=100), lower_is_better=True, backbones=["inception_v3_fid"])
    base["weights"]["inception_v3_fid"] = dict(file="pt_inception.pth", sha256="c" * 64)
    kid = leaderboard.metric_convention(base, "kid.std")
    assert kid["options"] == {"subset_size": 100} and kid["weights"] == {"inception_v3_fid": "c" * 64}
    psnr = leaderboard.metric_convention(base, "psnr")
    assert psnr == dict(options=dict(crop_border=0, y_channel=False), weights={}, precision="fp32", pretrained=True, pixels=base["pixels"])

    other = record(y_channel=True, crop_border=4)
    other.update(precision="fp16", pretrained=False, pixels={"data_range": "[0, 255]"})
    other["metrics"]["psnr"]["options"]["uint8_rounding"] = True  # set on one side only
    said = leaderboard.describe_difference(psnr, leaderboard.metric_convention(other, "psnr"), "psnr")
    assert said == [
        "crop 4 vs 0",
        "uint8_rounding true vs null",
        "Y vs RGB",
        'precision "fp16" vs "fp32"',
        "pretrained false vs true",
        'pixels {"data_range": "[0, 255]"} vs {"data_range": "[0, 1]"}',
    ]
    assert leaderboard.describe_difference(leaderboard.metric_convention(other, "psnr"), psnr, "psnr")[2] == "RGB vs Y"
    clean = dict(kid, options=dict(kid["options"], convention="clean-fid"), weights={"inception_v3_fid": None})
    assert leaderboard.describe_difference(kid, clean, "kid.std") == [
        "KID clean-fid vs None",
        f"inception_v3_fid weights sha none (random weights) vs {'c' * 8}…",
    ]
