"""``eval`` of clip datasets, in this process: the folder layouts it reads, what it resumes, and
one run against a server in a thread (``create_app``, no backbone: psnr and tof need none),
its JSON, CSV, console lines and exit status. Fast, and visible to mutation testing
(``service/client/eval/clips.py``); ``test_video.py`` runs the same command against real servers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import losses
from service.cli import main as cli_main
from service.client.eval import clips


def touch(path, content: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_a_folder_of_clips_is_read_in_frame_order_without_hidden_entries(tmp_path):
    """Frames sort by the number in their name (``9`` before ``10``); hidden files and folders,
    other files and folders without frames are no clips; a video file is a clip by its stem."""
    for name in ("im10.png", "im9.png", "im1.PNG", ".im0.png", "notes.txt"):
        touch(tmp_path / "b" / name)
    touch(tmp_path / "a" / "readme.md")
    touch(tmp_path / ".cache" / "1.png")
    touch(tmp_path / "c.MKV")
    touch(tmp_path / ".d.mp4")
    touch(tmp_path / "list.txt")
    found = clips.clips_in(tmp_path)
    assert list(found) == ["b", "c"]
    assert [p.name for p in found["b"]] == ["im1.PNG", "im9.png", "im10.png"] and found["c"] == tmp_path / "c.MKV"
    assert clips.frame_number("frame_0012.png") == 12 and clips.frame_number("gt.png") == -1


def test_a_clip_dataset_has_clips_and_no_images_of_its_own(tmp_path):
    assert not clips.is_clip_dataset(tmp_path)  # empty
    touch(tmp_path / "000" / "0.png")
    touch(tmp_path / ".thumb.png")  # hidden: not an image of the folder's own
    assert clips.is_clip_dataset(tmp_path)
    touch(tmp_path / "cover.JPG")
    assert not clips.is_clip_dataset(tmp_path)


def test_the_nested_layout_reads_the_listed_clips_in_list_order_and_counts_the_rest(tmp_path):
    for name in ("00002/0001", "00001/0266", "00001/0001", "00003/0004"):
        for frame in ("im2.png", "im10.png", "im1.png", "im1.txt"):
            touch(tmp_path / name / frame)
    touch(tmp_path / "00004/0007" / "notes.txt")  # listed, but no frames: missing
    found, missing, skipped = clips.nested_clips(tmp_path, ("00002/0001", "00001/0266", "00004/0007", "00009/0009"))
    assert list(found) == ["00002/0001", "00001/0266"]
    assert [p.name for p in found["00001/0266"]] == ["im1.png", "im2.png", "im10.png"]
    assert missing == ["00004/0007", "00009/0009"] and skipped == 2  # 00001/0001 and 00003/0004


def test_a_listed_preset_says_what_it_found_and_names_up_to_ten_missing_clips(tmp_path):
    touch(tmp_path / "00001/0001" / "im1.png")
    touch(tmp_path / "00001/0002" / "im1.png")
    said = []
    listed = tuple(f"00001/{i:04d}" for i in range(1, 13))
    found = clips.clips_of(tmp_path, dict(clips=listed), said.append)
    assert list(found) == ["00001/0001", "00001/0002"]
    missing = ", ".join(listed[2:12])
    assert said == [
        f"{tmp_path}: 2 of 12 listed clips; 0 other clip folder(s) left out",
        f"{tmp_path}: 10 listed clip(s) missing: {missing}",  # all ten named: no ellipsis
    ]
    said.clear()
    clips.clips_of(tmp_path, dict(clips=(*listed, "00001/0013")), said.append)
    assert said[1] == f"{tmp_path}: 11 listed clip(s) missing: {missing} …"  # ten named, and an ellipsis for the rest


def test_a_flat_preset_keeps_its_clips_and_no_preset_keeps_every_clip(tmp_path):
    for name in ("000", "001", "011"):
        touch(tmp_path / name / "0.png")
    said = []
    assert list(clips.clips_of(tmp_path, dict(clips=("000", "011", "015")), said.append)) == ["000", "011"]
    assert list(clips.clips_of(tmp_path, dict(clips=None), said.append)) == ["000", "001", "011"]
    assert list(clips.clips_of(tmp_path, None, said.append)) == ["000", "001", "011"] and said == []
    touch(tmp_path / "extra")  # a file without a frame suffix: not an image of the folder's own
    assert clips.is_clip_dataset(tmp_path)


def test_the_centre_frame_of_a_seven_frame_clip_is_the_fourth(tmp_path):
    frames = [tmp_path / f"im{i}.png" for i in range(1, 8)]
    assert clips.centre_frame(frames) == [frames[3]]
    assert clips.centre_frame(frames[:6]) == [frames[3]]
    with pytest.raises(ValueError, match="^the centre-frame convention needs clips given as folders of frames$"):
        clips.centre_frame(tmp_path / "clip.mp4")


def write_clip(folder, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index}.png")


def as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def server():
    from service.server.app import create_app
    from service.server.settings import Settings

    from .servers import ThreadServer

    with ThreadServer(create_app(Settings(models="", api_key="clip-key"))) as srv:
        yield srv


@pytest.fixture
def dataset(tmp_path):
    """GT clips 000 (7 frames) and 011 (6); model ``m`` has both, one frame of 011 corrupt; model
    ``n`` has 000 and a clip the GT lacks."""
    from skimage import data

    rng, photo = np.random.default_rng(3), data.astronaut()
    pan = lambda frames, top: np.stack([photo[top + 2 * t : top + 2 * t + 48, 3 * t : 3 * t + 64] for t in range(frames)])  # noqa: E731
    gt = {"000": pan(7, 100), "011": pan(6, 300)}  # real pans: tOF needs motion it can follow
    noisy = {name: np.clip(c.astype(int) + rng.integers(-12, 13, c.shape), 0, 255).astype(np.uint8) for name, c in gt.items()}
    for name, frames in gt.items():
        write_clip(tmp_path / "GT" / name, frames)
    write_clip(tmp_path / "m" / "000", noisy["000"])
    write_clip(tmp_path / "m" / "011", noisy["011"])
    (tmp_path / "m" / "011" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    write_clip(tmp_path / "n" / "000", np.roll(gt["000"], 1, axis=0))
    write_clip(tmp_path / "n" / "099", gt["000"])
    return tmp_path, gt, noisy


def eval_args(server, root, *more: str) -> list[str]:
    """``eval`` of models m and n against GT with psnr and tof, writing run.json and frames.csv."""
    return [
        "eval", "--url", server.url, "--sr", f"m={root / 'm'}", "--sr", f"n={root / 'n'}", "--gt", str(root / "GT"),
        "--metrics", "psnr,tof", "--json", str(root / "run.json"), "--out", str(root / "frames.csv"), "--api-key", "clip-key", *more,
    ]  # fmt: skip


def test_a_run_scores_every_pair_names_its_failures_and_unpaired_clips_and_exits_1(server, dataset, capsys):
    root, gt, noisy = dataset
    assert cli_main(eval_args(server, root, "--dataset", "tiny", "--scale", "4")) == 1  # a failure and an unpaired GT clip
    said = " ".join(capsys.readouterr().err.split())
    data = json.loads((root / "run.json").read_text())
    assert (data["format"], data["version"], data["dataset"], data["scale"], data["metrics"]) == (
        "loss-service-eval-clips",
        1,
        "tiny",
        4,
        "psnr,tof",
    )
    assert data["preset"] is None and data["conventions"]["metrics"]["psnr"]["options"]["y_channel"] is False
    assert data["gt_sources"]["011"] == [str((root / "GT" / "011" / f"{i}.png").resolve()) for i in range(6)]

    expected = losses.score_clip(as_tensor(noisy["000"]), as_tensor(gt["000"]), metrics=["psnr", "tof"])
    m = data["models"]["m"]
    assert list(m["clips"]) == ["000"] and m["sr_dir"] == str((root / "m").resolve())
    got = m["clips"]["000"]
    assert got["per_clip"]["psnr"] == pytest.approx(expected["per_clip"]["psnr"], rel=1e-9)
    assert got["per_clip"]["tof"] == pytest.approx(expected["per_clip"]["tof"], rel=1e-5)
    assert got["per_frame"]["psnr"] == pytest.approx(expected["per_frame"]["psnr"].tolist(), rel=1e-9)
    assert len(got["temporal"]["tof"]) == 2 and got["frames"]["psnr"] == list(range(7))
    assert got["sources"] == [str((root / "m" / "000" / f"{i}.png").resolve()) for i in range(7)]
    (failure,) = m["failures"]
    assert failure["clip"] == "011" and failure["status"] == 415 and "sr[2]: not a decodable image" in failure["message"]
    assert m["unpaired"] == dict(gt=[], sr=[]) and m["dataset"]["psnr"]["clips"] == 1
    assert data["models"]["n"]["unpaired"] == dict(gt=["011"], sr=["099"]) and data["models"]["n"]["failures"] == []
    assert data["models"]["n"]["clips"]["000"]["per_clip"]["psnr"] < got["per_clip"]["psnr"]  # frames one step late

    assert f"m / 000: psnr {got['per_clip']['psnr']:.4f}, tof {got['per_clip']['tof']:.4f}" in said
    assert "m / 011: " in said and "sr[2]: not a decodable image" in said
    assert "n: gt clips without a partner: 011" in said and "n: sr clips without a partner: 099" in said
    assert "m: 1 clip(s); psnr " in said
    rows = list(csv.DictReader(open(root / "frames.csv")))
    assert len(rows) == 7 + 7 and {(r["model"], r["clip"]) for r in rows} == {("m", "000"), ("n", "000")}


def test_resume_scores_only_what_the_json_lacks_and_a_run_of_other_metrics_starts_again(server, dataset, capsys):
    root, gt, noisy = dataset
    cli_main(eval_args(server, root))
    first = json.loads((root / "run.json").read_text())
    Image.fromarray(noisy["011"][2]).save(root / "m" / "011" / "2.png")
    capsys.readouterr()
    assert cli_main(eval_args(server, root, "--resume", "--store", str(root / "r.db"), "--dataset", "tiny")) == 1  # n still lacks 011
    said = " ".join(capsys.readouterr().err.split())
    assert "m: 1 clip(s) already in" in said and "n: 1 clip(s) already in" in said
    assert "m / 000:" not in said and "m / 011: psnr" in said  # only the clip that failed is sent again
    second = json.loads((root / "run.json").read_text())
    assert second["models"]["m"]["clips"]["000"] == first["models"]["m"]["clips"]["000"] and second["models"]["m"]["failures"] == []
    assert second["conventions"] == first["conventions"]
    from service.client.store import ResultsStore

    with ResultsStore(root / "r.db") as store:
        stored = {(r.model, r.image, r.metric): r.value for r in store.rows()}
    assert stored[("m", "011", "tof")] == second["models"]["m"]["clips"]["011"]["per_clip"]["tof"]
    assert sorted(stored) == sorted(
        (model, clip, metric) for model, clip in (("m", "000"), ("m", "011"), ("n", "000")) for metric in ("psnr", "tof")
    )

    for other in (dict(first, metrics="psnr"), dict(first, format="loss-service-eval")):  # another run's JSON
        (root / "run.json").write_text(json.dumps(other))
        capsys.readouterr()
        cli_main(eval_args(server, root, "--resume"))
        said = " ".join(capsys.readouterr().err.split())
        assert "already in" not in said and "m / 000: psnr" in said  # scored again


def test_quiet_prints_only_failures_and_the_summary(server, dataset, capsys):
    root, _, _ = dataset
    assert cli_main(eval_args(server, root, "--quiet")) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "m / 000:" not in said and "m / 011: " in said and "m: 1 clip(s); psnr" in said


def test_a_clean_run_exits_0_and_passes_its_metric_options(server, dataset, capsys):
    root, gt, noisy = dataset
    Image.fromarray(noisy["011"][2]).save(root / "m" / "011" / "2.png")
    args = ["eval", "--url", server.url, "--api-key", "clip-key", "--sr", f"m={root / 'm'}", "--gt", str(root / "GT"), "--metrics", "psnr"]
    args += ["--y-channel", "--crop-border", "4", "--json", str(root / "y.json"), "--out", str(root / "y.csv")]
    assert cli_main(args) == 0
    data = json.loads((root / "y.json").read_text())
    assert data["backend"] == "server" and data["options"] == dict(y_channel=True, crop_border=4)
    expected = losses.score_clip(as_tensor(noisy["011"]), as_tensor(gt["011"]), metrics=["psnr"], y_channel=True, crop_border=4)
    assert data["models"]["m"]["clips"]["011"]["per_clip"]["psnr"] == pytest.approx(expected["per_clip"]["psnr"], rel=1e-9)
    assert data["conventions"]["metrics"]["psnr"]["options"] == dict(y_channel=True, crop_border=4)


def test_a_frame_that_cannot_be_read_here_fails_its_clip_without_a_status(server, dataset):
    root, _, _ = dataset
    (root / "n" / "000" / "3.png").unlink()
    (root / "n" / "000" / "3.png").mkdir()  # listed as a frame, unreadable: an OSError before any request
    assert cli_main(eval_args(server, root, "--quiet")) == 1
    (failure,) = json.loads((root / "run.json").read_text())["models"]["n"]["failures"]
    assert failure["clip"] == "000" and failure["status"] is None and "3.png" in failure["message"]


def test_a_wrong_key_or_a_timeout_is_each_clips_failure(server, dataset):
    root, _, _ = dataset
    assert cli_main([*eval_args(server, root, "--quiet")[:-3], "--api-key", "wrong"]) == 1
    failures = json.loads((root / "run.json").read_text())["models"]["m"]["failures"]
    assert {f["status"] for f in failures} == {401} and len(failures) == 2
    assert cli_main(eval_args(server, root, "--quiet", "--timeout", "0.001")) == 1
    failures = json.loads((root / "run.json").read_text())["models"]["m"]["failures"]
    by_clip = {f["clip"]: f for f in failures}  # 011's corrupt frame may be refused before the timeout
    assert set(by_clip) == {"000", "011"} and "timed out" in by_clip["000"]["message"]
    assert by_clip["000"]["status"] is None


def test_the_vimeo_preset_scores_the_centre_frame_of_each_listed_clip_and_records_the_preset(server, tmp_path, capsys):
    from service.client.eval.presets import listed_clips

    listed = listed_clips("vimeo90k/meta_info_Vimeo90K_test_GT.txt")
    rng = np.random.default_rng(8)
    frames = {name: rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8) for name in listed[:2]}
    for name, clip in frames.items():
        for role, pixels in (("GT", clip), ("SR", np.clip(clip.astype(int) + 9, 0, 255).astype(np.uint8))):
            (tmp_path / role / name).mkdir(parents=True)
            for index, frame in enumerate(pixels):
                Image.fromarray(frame).save(tmp_path / role / name / f"im{index + 1}.png")
    args = ["eval", "--url", server.url, "--api-key", "clip-key", "--sr", f"m={tmp_path / 'SR'}", "--gt", str(tmp_path / "GT")]
    args += ["--metrics", "psnr", "--preset", "Vimeo90K-T", "--json", str(tmp_path / "v.json"), "--out", str(tmp_path / "v.csv")]
    assert cli_main(args) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 'GT'}: 2 of 7824 listed clips; 0 other clip folder(s) left out" in said
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["preset"]["name"] == "Vimeo90K-T" and data["preset"]["clips"] == list(listed) and data["preset"]["centre_frame"] is True
    assert data["dataset"] == "Vimeo90K-T" and data["options"] == dict(y_channel=True, crop_border=0)
    for name in frames:
        assert data["gt_sources"][name] == [str((tmp_path / "GT" / name / "im4.png").resolve())]
        assert data["models"]["m"]["clips"][name]["sources"] == [str((tmp_path / "SR" / name / "im4.png").resolve())]
    capsys.readouterr()
    assert cli_main([*args, "--quiet"]) == 0
    assert "listed clips" not in capsys.readouterr().err  # --quiet: the layout's counts are not said


def test_a_preset_that_refuses_the_metrics_is_exit_2_with_its_reason(server, dataset, capsys):
    root, _, _ = dataset
    assert cli_main(eval_args(server, root, "--preset", "Vimeo90K-T")) == 2
    assert "scores the centre frame of each clip only: tof and tlp need consecutive frames" in " ".join(capsys.readouterr().err.split())
    assert not (root / "run.json").exists()


def test_a_flat_preset_is_recorded_with_its_clip_list(server, dataset):
    root, _, _ = dataset
    assert cli_main(eval_args(server, root, "--preset", "REDS4", "--quiet")) == 1
    data = json.loads((root / "run.json").read_text())
    assert data["preset"] == dict(
        name="REDS4", options=dict(y_channel=False, crop_border=0), clips=["000", "011", "015", "020"], centre_frame=False
    )
    assert data["gt_sources"]["000"] == [str((root / "GT" / "000" / f"{i}.png").resolve()) for i in range(7)]
    assert data["dataset"] == "REDS4" and sorted(data["models"]["n"]["clips"]) == ["000"]


def test_resume_reads_what_an_older_or_partial_json_holds(server, dataset, capsys):
    root, _, _ = dataset
    assert cli_main(eval_args(server, root, "--resume", "--quiet")) == 1  # no JSON yet: everything is scored
    first = json.loads((root / "run.json").read_text())
    partial = dict(first, models={"m": first["models"]["m"], "n": {}})  # n's clips not written
    partial.pop("conventions")
    (root / "run.json").write_text(json.dumps(partial))
    capsys.readouterr()
    assert cli_main(eval_args(server, root, "--resume")) == 1
    said = " ".join(capsys.readouterr().err.split())
    assert "m: 1 clip(s) already in" in said and "n / 000: psnr" in said and "m / 000" not in said
    undated = lambda record: {k: v for k, v in record.items() if k != "date"}  # noqa: E731  (a new answer's date may differ)
    assert undated(json.loads((root / "run.json").read_text())["conventions"]) == undated(first["conventions"])  # from the answers
    (root / "run.json").write_text(json.dumps(dict(format="loss-service-eval-clips", metrics="psnr,tof")))  # no models
    assert cli_main(eval_args(server, root, "--resume", "--quiet")) == 1


def test_a_store_that_is_not_a_results_store_is_exit_2_naming_it(server, dataset, capsys):
    import sqlite3

    root, _, _ = dataset
    foreign = root / "notes.db"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (text TEXT)").connection.commit()
    assert cli_main(eval_args(server, root, "--quiet", "--store", str(foreign))) == 2
    assert "notes.db" in capsys.readouterr().err


def test_a_video_clip_is_recorded_by_its_file(tmp_path):
    video = tmp_path / "clip.mkv"
    video.write_bytes(b"")
    assert clips.source_record(video) == str(video.resolve())
    assert clips.source_record([video]) == [str(video.resolve())]


def test_the_tecogan_preset_renames_its_columns_and_resumes_under_those_names(server, dataset, capsys):
    root, _, _ = dataset
    assert cli_main(eval_args(server, root, "--preset", "TecoGAN", "--quiet")) == 1
    data = json.loads((root / "run.json").read_text())
    assert data["metrics"] == "tecogan_psnr,tof" and data["preset"]["clips"] == [] and data["preset"]["name"] == "TecoGAN"
    capsys.readouterr()
    assert cli_main(eval_args(server, root, "--preset", "TecoGAN", "--resume")) == 1
    assert "m: 1 clip(s) already in" in " ".join(capsys.readouterr().err.split())


def test_without_resume_an_earlier_json_is_scored_again(server, dataset, capsys):
    root, _, _ = dataset
    cli_main(eval_args(server, root, "--quiet"))
    capsys.readouterr()
    cli_main(eval_args(server, root))
    said = " ".join(capsys.readouterr().err.split())
    assert "already in" not in said and "m / 000: psnr" in said


def test_a_fully_resumed_run_stores_with_the_jsons_conventions_and_drops_clips_no_longer_paired(server, dataset):
    root, _, _ = dataset
    cli_main(eval_args(server, root, "--quiet"))
    first = json.loads((root / "run.json").read_text())
    first["models"]["n"]["clips"]["099"] = first["models"]["n"]["clips"]["000"]  # n's 099 has no GT clip
    (root / "run.json").write_text(json.dumps(first))
    args = eval_args(server, root, "--quiet", "--resume", "--store", str(root / "r.db"), "--dataset", "tiny")
    args[args.index("--url") + 1] = "http://127.0.0.1:9"  # nothing listens: only failed clips would be sent
    assert cli_main(args) == 1  # m's 011, which failed, is sent again and fails again
    after = json.loads((root / "run.json").read_text())
    assert sorted(after["models"]["n"]["clips"]) == ["000"] and after["conventions"] == first["conventions"]
    from service.client.store import ResultsStore

    with ResultsStore(root / "r.db") as store:
        (record,) = store.conventions().values()
    assert record["metrics"]["psnr"] == first["conventions"]["metrics"]["psnr"]
