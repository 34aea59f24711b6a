"""Clips from disk: lossless FFV1 decodes to exactly the frames it was made from, H.264 to the
frames FFmpeg itself gives (imageio-ffmpeg's binary, ``-pix_fmt rgb24``), frames sort by the
number in their name, and a frame of another size is refused naming the clip and the frame."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

import losses
from losses.clips.video import frame_paths, read_clip


def photo_clip(photo: np.ndarray, frames: int = 6, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A pan over a real photo, 2 px per frame."""
    return np.stack([photo[t * 2 : t * 2 + size[0], t * 3 : t * 3 + size[1]] for t in range(frames)])


def write_video(path, frames: np.ndarray, codec: str, pixel_format: str, **tags) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pixel_format
        for name, value in tags.items():
            setattr(stream.codec_context, name, value)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_lossless_ffv1_decodes_to_exactly_its_frames(photos, tmp_path):
    frames = photo_clip(photos[0])
    write_video(tmp_path / "clip.mkv", frames, "ffv1", "bgr0")
    decoded, how = read_clip(tmp_path / "clip.mkv")
    assert np.array_equal(decoded, frames) and how["rgb_source"] and how["frames"] == len(frames)


def test_h264_decodes_to_the_frames_ffmpeg_gives(photos, tmp_path):
    frames = photo_clip(photos[1])
    path = tmp_path / "clip.mp4"
    write_video(path, frames, "libx264", "yuv420p")
    decoded, how = read_clip(path)
    raw = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    by_ffmpeg = np.frombuffer(raw, np.uint8).reshape(decoded.shape)
    assert np.array_equal(decoded, by_ffmpeg)
    assert (how["matrix"], how["range"], how["declared"]) == ("ITU601", "MPEG", dict(matrix=False, range=False))
    assert np.abs(decoded.astype(int) - frames).mean() < 8  # lossy, but the same pictures


def test_a_declared_matrix_and_range_are_used_and_recorded(photos, tmp_path):
    frames = photo_clip(photos[2])
    path = tmp_path / "bt709.mp4"
    write_video(path, frames, "libx264", "yuv420p", colorspace=1, color_range=2)  # BT.709, full range
    decoded, how = read_clip(path)
    assert (how["matrix"], how["range"], how["declared"]) == ("ITU709", "JPEG", dict(matrix=True, range=True))
    with av.open(str(path)) as container:
        as_601 = np.stack(
            [f.reformat(format="rgb24", src_colorspace="ITU601", src_color_range="MPEG").to_ndarray() for f in container.decode(video=0)]
        )
    assert not np.array_equal(decoded, as_601)


def test_frames_are_ordered_by_the_number_in_their_name(photos, tmp_path):
    frames = photo_clip(photos[0], frames=12, size=(40, 40))
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"frame{index}.png")  # frame10 sorts before frame2 as text
    assert [p.name for p in frame_paths(tmp_path)] == [f"frame{i}.png" for i in range(12)]
    decoded, how = read_clip(tmp_path)
    assert np.array_equal(decoded, frames) and how["source"] == "frames"


def test_a_frame_of_another_size_is_refused_naming_the_clip_and_the_frame(photos, tmp_path):
    frames = photo_clip(photos[0], frames=3, size=(40, 40))
    for index, frame in enumerate(frames):
        Image.fromarray(frame if index != 2 else frame[:30]).save(tmp_path / f"{index:03d}.png")
    with pytest.raises(ValueError, match=r"frame 002\.png is 40×30 but the clip's first frame is 40×40"):
        read_clip(tmp_path)


def test_a_clip_read_from_ffv1_scores_as_its_frames(weights_dir, photos, tmp_path):
    gt = photo_clip(photos[0], frames=7)
    sr = np.clip(gt.astype(int) + np.random.default_rng(3).integers(-12, 13, gt.shape), 0, 255).astype(np.uint8)
    write_video(tmp_path / "sr.mkv", sr, "ffv1", "bgr0")
    write_video(tmp_path / "gt.mkv", gt, "ffv1", "bgr0")
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    from_disk = losses.score_clip(to(read_clip(tmp_path / "sr.mkv")[0]), to(read_clip(tmp_path / "gt.mkv")[0]), metrics=["psnr", "tof"])
    direct = losses.score_clip(to(sr), to(gt), metrics=["psnr", "tof"])
    assert from_disk["per_clip"] == direct["per_clip"]


# --- POST /v1/score/clip ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(weights_dir):
    from .servers import SubprocessServer

    with SubprocessServer("--models", "alexnet", "--max-clip-pixels", str(8 * 96 * 128)) as srv:
        yield srv


def clip_pair(photos) -> tuple[np.ndarray, np.ndarray]:
    gt = photo_clip(photos[0], frames=7)
    sr = np.clip(gt.astype(int) + np.random.default_rng(5).integers(-10, 11, gt.shape), 0, 255).astype(np.uint8)
    return sr, gt


def test_a_clip_scores_as_the_library_from_videos_and_from_frames(server, photos, tmp_path):
    import httpx

    from .servers import png_bytes

    sr, gt = clip_pair(photos)
    write_video(tmp_path / "sr.mkv", sr, "ffv1", "bgr0")
    write_video(tmp_path / "gt.mkv", gt, "ffv1", "bgr0")
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    expected = losses.score_clip(to(sr), to(gt), metrics=["psnr", "lpips_alex", "tof", "tlp"], crop_border=2)
    videos = [("sr", (tmp_path / "sr.mkv").read_bytes()), ("gt", (tmp_path / "gt.mkv").read_bytes())]
    frames = [("sr", png_bytes(f)) for f in sr] + [("gt", png_bytes(f)) for f in gt]
    for files in (videos, frames):
        response = httpx.post(
            f"{server.url}/v1/score/clip",
            files=files,
            timeout=120,
            data=dict(metrics="psnr,lpips_alex,tof,tlp", options='{"crop_border": 2}'),
        )
        assert response.status_code == 200, response.text
        body = response.json()
        for name, value in expected["per_clip"].items():
            assert body["per_clip"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        assert body["per_frame"]["psnr"] == pytest.approx(expected["per_frame"]["psnr"].tolist(), rel=1e-9)
        assert body["frames"]["tof"] == [3, 4] and body["conventions"]["metrics"]["tof"]["options"] == {"skip": 2}
        assert "mean over its frames" in body["conventions"]["averaging"]["clip"]
        assert body["conventions"]["metrics"]["psnr"]["options"]["crop_border"] == 2


@pytest.mark.parametrize("skip", [0, 1])
def test_skip_over_http_leaves_out_that_many_frames(server, photos, skip):
    import httpx

    from .servers import png_bytes

    sr, gt = clip_pair(photos)
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    expected = losses.score_clip(to(sr), to(gt), metrics=["tof"], skip=skip)
    frames = [("sr", png_bytes(f)) for f in sr] + [("gt", png_bytes(f)) for f in gt]
    response = httpx.post(f"{server.url}/v1/score/clip", files=frames, timeout=120, data=dict(metrics="tof", options=f'{{"skip": {skip}}}'))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["frames"]["tof"] == list(range(skip + 1, len(gt) - skip)) == expected["frames"]["tof"]
    assert body["temporal"]["tof"] == pytest.approx(expected["temporal"]["tof"].tolist(), rel=1e-6)
    assert body["conventions"]["metrics"]["tof"]["options"] == {"skip": skip}


def test_clip_refusals(server, photos, tmp_path):
    import httpx

    from .servers import png_bytes

    sr, gt = clip_pair(photos)
    post = lambda files, **data: httpx.post(f"{server.url}/v1/score/clip", files=files, data=data, timeout=60)  # noqa: E731
    short = post([("sr", png_bytes(f)) for f in sr] + [("gt", png_bytes(f)) for f in gt[:5]], metrics="psnr")
    assert short.status_code == 422 and "sr has 7 frames but gt has 5" in short.json()["detail"][0]["msg"]
    corrupt = post([("sr", b"\x1aE\xdf\xa3" + b"\x00" * 200), ("gt", b"\x1aE\xdf\xa3" + b"\x00" * 200)], metrics="psnr")
    assert corrupt.status_code == 415 and corrupt.json()["detail"][0]["loc"] == ["body", "sr"]
    long = np.concatenate([sr, sr])  # 14 frames of 96×128: over --max-clip-pixels (8 frames)
    write_video(tmp_path / "long.mkv", long, "ffv1", "bgr0")
    too_big = post([("sr", (tmp_path / "long.mkv").read_bytes()), ("gt", (tmp_path / "long.mkv").read_bytes())], metrics="psnr")
    assert too_big.status_code == 413 and "--max-clip-pixels" in too_big.json()["detail"][0]["msg"]
    unknown = post([("sr", png_bytes(sr[0])), ("gt", png_bytes(gt[0]))], metrics="psnr,tofu")
    assert unknown.status_code == 422 and "tofu" in unknown.json()["detail"][0]["msg"]
    bad_skip = post([("sr", png_bytes(sr[0])), ("gt", png_bytes(gt[0]))], metrics="tof", options='{"skip": -1}')
    assert bad_skip.status_code == 422 and "skip" in bad_skip.json()["detail"][0]["msg"]
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/score/clip" in schema["paths"]


def test_both_clients_score_a_clip(server, photos, tmp_path):
    import asyncio

    from service.client import AsyncLossClient, LossClient

    sr, gt = clip_pair(photos)
    write_video(tmp_path / "sr.mkv", sr, "ffv1", "bgr0")
    write_video(tmp_path / "gt.mkv", gt, "ffv1", "bgr0")
    with LossClient(server.url) as client:
        from_videos = client.score_clip(str(tmp_path / "sr.mkv"), tmp_path / "gt.mkv", metrics="psnr,tof")
        from_frames = client.score_clip(list(sr), list(gt), metrics="psnr,tof")

    async def scored():
        async with AsyncLossClient(server.url) as client:
            return await client.score_clip((tmp_path / "sr.mkv").read_bytes(), (tmp_path / "gt.mkv").read_bytes(), metrics="psnr,tof")

    for other in (from_frames, asyncio.run(scored())):
        assert other["per_clip"] == pytest.approx(from_videos["per_clip"], rel=1e-9)
    assert len(from_videos["per_frame"]["psnr"]) == 7 and len(from_videos["temporal"]["tof"]) == 2


def test_eval_scores_a_dataset_of_clips_as_basicsr_averages(server, photos, tmp_path):
    """A REDS-like layout (GT/<clip>/<frame>.png) for one model and a folder of FFV1 videos for
    another: per-clip values equal the library's, the dataset value is the mean over clips."""
    import csv
    import json

    from service.cli import main as cli_main

    clips = {"000": clip_pair(photos), "011": tuple(c[:6] for c in clip_pair(photos[1:]))}
    for role in ("GT", "SR"):
        for name, (sr, gt) in clips.items():
            (tmp_path / role / name).mkdir(parents=True)
            for index, frame in enumerate(gt if role == "GT" else sr):
                Image.fromarray(frame).save(tmp_path / role / name / f"{index}.png")  # 10 frames would sort after 1
    (tmp_path / "videos").mkdir()
    for name, (sr, _) in clips.items():
        write_video(tmp_path / "videos" / f"{name}.mkv", sr, "ffv1", "bgr0")
    out = tmp_path / "clips.json"
    code = cli_main(
        [
            "eval",
            "--url",
            server.url,
            "--sr",
            f"frames={tmp_path / 'SR'}",
            "--sr",
            f"video={tmp_path / 'videos'}",
            "--gt",
            str(tmp_path / "GT"),
            "--metrics",
            "psnr,tof",
            "--json",
            str(out),
            "--out",
            str(tmp_path / "f.csv"),
            "--quiet",
        ]
    )
    assert code == 0
    data = json.loads(out.read_text())
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    expected = {name: losses.score_clip(to(sr), to(gt), metrics=["psnr", "tof"]) for name, (sr, gt) in clips.items()}
    for model in ("frames", "video"):
        got = data["models"][model]
        for name in clips:
            assert got["clips"][name]["per_clip"]["psnr"] == pytest.approx(expected[name]["per_clip"]["psnr"], rel=1e-9)
            assert got["clips"][name]["per_clip"]["tof"] == pytest.approx(expected[name]["per_clip"]["tof"], rel=1e-5)
        psnr = got["dataset"]["psnr"]
        assert psnr["clip_mean"] == pytest.approx(np.mean([e["per_clip"]["psnr"] for e in expected.values()]), rel=1e-9)
        every = np.concatenate([e["per_frame"]["psnr"] for e in expected.values()])
        assert psnr["frame_weighted_mean"] == pytest.approx(every.mean(), rel=1e-9) and psnr["clips"] == 2
    rows = list(csv.DictReader(open(tmp_path / "f.csv")))
    assert len(rows) == 2 * (7 + 6) and {r["clip"] for r in rows} == {"000", "011"}

    # --resume: every clip is in the JSON already, so no request is sent (nothing listens on port 9).
    first = out.read_text()
    args = ["eval", "--url", "http://127.0.0.1:9", "--sr", f"frames={tmp_path / 'SR'}", "--sr", f"video={tmp_path / 'videos'}"]
    args += ["--gt", str(tmp_path / "GT"), "--metrics", "psnr,tof", "--json", str(out), "--out", str(tmp_path / "f.csv"), "--quiet"]
    assert cli_main([*args, "--resume", "--store", str(tmp_path / "results.db"), "--dataset", "tiny"]) == 0
    assert json.loads(out.read_text())["models"] == json.loads(first)["models"]
    from service.client.store import ResultsStore

    with ResultsStore(tmp_path / "results.db") as store:  # each clip's mean is a row: the board's mean is BasicSR's
        stored = {(r.model, r.dataset, r.image, r.metric): r.value for r in store.rows()}
    assert stored[("frames", "tiny", "011", "psnr")] == data["models"]["frames"]["clips"]["011"]["per_clip"]["psnr"]
    assert len(stored) == 2 * 2 * 2  # models × clips × metrics

    # The report: per-clip tables equal to the JSON, a plot over time per clip, the worst clip's frames.
    html, md = tmp_path / "clips.html", tmp_path / "clips.md"
    tex = tmp_path / "clips.tex"
    assert cli_main(["report", str(out), "--html", str(html), "--markdown", str(md), "--latex", str(tex)]) == 0
    page, table = html.read_text(), md.read_text()
    assert "psnr $\\uparrow$ & 000 & 011 & Average" in tex.read_text()
    for name in clips:
        psnr = {model: data["models"][model]["clips"][name]["per_clip"]["psnr"] for model in ("frames", "video")}
        assert any(line.startswith(f"| {name} |") and f"{psnr['frames']:.2f}" in line for line in table.splitlines())
        assert f"{name}: per frame" in page  # the clip's time plot (an inline SVG's title)
    time_section = page[page.index('<section id="time">') : page.index('<section id="strip">')]
    assert time_section.count("<svg") == 2
    worst = min(clips, key=lambda n: np.mean([data["models"][m]["clips"][n]["per_clip"]["psnr"] for m in ("frames", "video")]))
    strip = page[page.index('<section id="strip">') :]
    assert f"Worst clip: {worst}" in strip and strip.count("data:image/png;base64,") == 2 * 5  # GT and frames, 5 frames each
    assert "Not shown (video clips): video" in strip


def test_presets_set_the_published_conventions_and_record_them(server, photos, tmp_path, capsys):
    """REDS4: RGB, crop 0, only clips 000/011/015/020 (BasicSR's test_BasicVSR_REDS.yml); the
    centre-frame presets refuse temporal metrics."""
    import json

    from service.cli import main as cli_main

    sr, gt = clip_pair(photos)  # 7 frames
    names = ("000", "011", "015", "020", "001")
    for role, frames in (("GT", gt), ("SR", sr)):
        for name in names:
            (tmp_path / role / name).mkdir(parents=True)
            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(tmp_path / role / name / f"im{index + 1}.png")
    common = [
        "eval",
        "--url",
        server.url,
        "--sr",
        f"m={tmp_path / 'SR'}",
        "--gt",
        str(tmp_path / "GT"),
        "--out",
        str(tmp_path / "f.csv"),
        "--quiet",
    ]
    assert cli_main([*common, "--preset", "REDS4", "--metrics", "psnr", "--json", str(tmp_path / "reds.json")]) == 0
    reds = json.loads((tmp_path / "reds.json").read_text())
    assert sorted(reds["models"]["m"]["clips"]) == ["000", "011", "015", "020"] and reds["preset"]["name"] == "REDS4"
    assert reds["conventions"]["metrics"]["psnr"]["options"] == {"crop_border": 0, "y_channel": False}
    assert cli_main([*common, "--preset", "TecoGAN", "--metrics", "psnr,tof", "--json", str(tmp_path / "teco.json")]) == 0
    teco = json.loads((tmp_path / "teco.json").read_text())
    assert teco["metrics"] == "tecogan_psnr,tof" and set(teco["models"]["m"]["clips"]["000"]["per_clip"]) == {"tecogan_psnr", "tof"}
    assert teco["models"]["m"]["clips"]["000"]["frames"]["tecogan_psnr"] == [2, 3, 4]  # 7 frames, TecoGAN's cut of 2
    capsys.readouterr()
    assert cli_main([*common, "--preset", "TecoGAN", "--metrics", "ssim,tof"]) == 2
    assert "not ['ssim']" in " ".join(capsys.readouterr().err.split())
    assert cli_main([*common, "--preset", "REDS4", "--metrics", "psnr,tof"]) == 0
    assert cli_main([*common, "--preset", "Vimeo90K-T", "--metrics", "psnr,tof"]) == 2
    assert "centre frame" in capsys.readouterr().err


def test_vimeo90k_t_reads_the_nested_layout_and_scores_only_the_listed_clips(server, photos, tmp_path, capsys):
    """Vimeo-90K's layout (``00001/0266/im1.png``): the 7824 listed clips and no other folder; the
    run says how many folders it left out and names the listed clips that are missing."""
    import json

    from service.cli import main as cli_main
    from service.client.eval.presets import listed_clips

    listed = listed_clips("vimeo90k/meta_info_Vimeo90K_test_GT.txt")
    slow = listed_clips("vimeo90k/meta_info_Vimeo90K_test_slow_GT.txt")
    assert len(listed) == 7824 and listed[0] == "00001/0266" and set(slow) < set(listed)
    sr, gt = clip_pair(photos)
    slow_clip = next(name for name in slow if name not in listed[:2])
    present = [listed[0], listed[1], slow_clip, "00001/0001"]  # three listed clips, one training clip
    for role, frames in (("GT", gt), ("SR", sr)):
        for name in present:
            (tmp_path / role / name).mkdir(parents=True)
            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(tmp_path / role / name / f"im{index + 1}.png")
    common = ["eval", "--url", server.url, "--sr", f"m={tmp_path / 'SR'}", "--gt", str(tmp_path / "GT"), "--metrics", "psnr"]
    capsys.readouterr()
    assert cli_main([*common, "--preset", "Vimeo90K-T", "--out", str(tmp_path / "v.csv"), "--json", str(tmp_path / "v.json")]) == 0
    said = " ".join("".join(capsys.readouterr()).split())  # rich wraps long lines
    assert "3 of 7824 listed clips; 1 other clip folder(s) left out" in said and "7821 listed clip(s) missing: " in said
    first_missing = next(name for name in listed if name not in present)
    assert f"missing: {first_missing}" in said
    clips = json.loads((tmp_path / "v.json").read_text())["models"]["m"]["clips"]
    assert sorted(clips) == sorted(present[:3]) and all(clip["frames"]["psnr"] == [0] for clip in clips.values())
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    centre = losses.score(to(sr[3:4]), to(gt[3:4]), metrics=["psnr"], y_channel=True)["psnr"].item()  # Y, the 4th of 7 frames
    assert clips[listed[0]]["per_clip"]["psnr"] == pytest.approx(centre, rel=1e-12)
    assert cli_main([*common, "--preset", "Vimeo90K-T-slow", "--out", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json")]) == 0
    expected_slow = sorted(name for name in present if name in slow)
    assert sorted(json.loads((tmp_path / "s.json").read_text())["models"]["m"]["clips"]) == expected_slow and slow_clip in expected_slow


# --- VMAF ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric, model", [("vmaf", "vmaf_v0.6.1"), ("vmaf_neg", "vmaf_v0.6.1neg")])
def test_vmaf_equals_ffmpegs_libvmaf_run_as_a_user_types_it(photos, tmp_path, metric, model):
    """The user's command: the frames as PNG sequences, ``ffmpeg -i sr/%d.png -i gt/%d.png -lavfi
    "[0:v]format=yuv420p[d];[1:v]format=yuv420p[r];[d][r]libvmaf=model=version=...:log_fmt=json..."``."""
    import json

    from losses.clips.vmaf import ffmpeg_with_libvmaf

    sr, gt = clip_pair(photos)
    for role, frames in (("sr", sr), ("gt", gt)):
        (tmp_path / role).mkdir()
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp_path / role / f"{index}.png")
    log = tmp_path / "vmaf.json"
    graph = f"[0:v]format=yuv420p[d];[1:v]format=yuv420p[r];[d][r]libvmaf=model=version={model}:log_fmt=json:log_path={log}"
    subprocess.run(
        [
            ffmpeg_with_libvmaf(),
            "-v",
            "error",
            "-i",
            str(tmp_path / "sr" / "%d.png"),
            "-i",
            str(tmp_path / "gt" / "%d.png"),
            "-lavfi",
            graph,
            "-f",
            "null",
            "-",
        ],
        check=True,
        capture_output=True,
    )
    expected = [frame["metrics"]["vmaf"] for frame in json.loads(log.read_text())["frames"]]
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    got = losses.score_clip(to(sr), to(gt), metrics=[metric])
    assert got["per_frame"][metric].tolist() == pytest.approx(expected, abs=1e-4)
    assert got["per_clip"][metric] == pytest.approx(np.mean(expected), abs=1e-4)
    assert got["details"][metric]["model"] == model and got["details"][metric]["libvmaf"]
    assert 0 < got["per_clip"][metric] <= 100


def test_vmaf_through_the_server(server, photos):
    from service.client import LossClient

    sr, gt = clip_pair(photos)
    with LossClient(server.url) as client:
        answer = client.score_clip(list(sr), list(gt), metrics="psnr,vmaf")
        catalogue = {entry["name"]: entry for entry in client.metrics()}
    assert catalogue["vmaf"]["clip"] and catalogue["vmaf"]["available"] and catalogue["tlp"]["available"]  # this server loads alexnet
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    expected = losses.score_clip(to(sr), to(gt), metrics=["vmaf"])
    assert answer["per_frame"]["vmaf"] == pytest.approx(expected["per_frame"]["vmaf"].tolist(), abs=1e-4)
    assert answer["vmaf"]["vmaf"]["model"] == "vmaf_v0.6.1" and "yuv420p" in answer["vmaf"]["vmaf"]["yuv"]


def ffmpeg_vmaf_of_files(sr: Path, gt: Path, model: str, work: Path) -> list[float]:
    """The user's command on two video files: ``ffmpeg -i sr -i gt -lavfi libvmaf`` (no format filter)."""
    import json

    from losses.clips.vmaf import ffmpeg_with_libvmaf

    log = work / f"ffmpeg-{model}.json"
    graph = f"[0:v][1:v]libvmaf=model=version={model}:log_fmt=json:log_path={log}"
    subprocess.run([ffmpeg_with_libvmaf(), "-v", "error", "-i", str(sr), "-i", str(gt), "-lavfi", graph, "-f", "null", "-"], check=True)
    return [frame["metrics"]["vmaf"] for frame in json.loads(log.read_text())["frames"]]


def saturated_clip(frames: int = 6, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Saturated, noisy colour blocks drifting by a pixel a frame: where YUV conversions disagree most."""
    rng = np.random.default_rng(11)
    base = np.repeat(np.repeat(rng.choice([0, 255], size=(size[0] // 8 + 2, size[1] // 8 + 2, 3)), 8, 0), 8, 1).astype(np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
    return np.stack([noisy[t : t + size[0], t : t + size[1]] for t in range(frames)])


VIDEO_CASES = {
    "h264-bt601-natural": ("libx264", "yuv420p", dict(colorspace=6), "natural"),  # SMPTE 170M (BT.601)
    "h264-bt709-saturated": ("libx264", "yuv420p", dict(colorspace=1), "saturated"),
    "ffv1-10bit-bt709-natural": ("ffv1", "yuv420p10le", dict(colorspace=1), "natural"),
    "ffv1-10bit-bt601-saturated": ("ffv1", "yuv420p10le", dict(colorspace=6), "saturated"),
}


@pytest.mark.parametrize("case", sorted(VIDEO_CASES))
def test_vmaf_of_video_files_reads_the_source_planes_as_ffmpeg_does(photos, tmp_path, case):
    """8- and 10-bit 4:2:0, BT.601- and BT.709-tagged, natural and saturated: equal to FFmpeg's
    libvmaf on the same two files, with no RGB round trip (the frames' path would differ)."""
    codec, pixel_format, tags, content = VIDEO_CASES[case]
    gt = photo_clip(photos[0]) if content == "natural" else saturated_clip()
    sr = np.clip(gt.astype(int) + np.random.default_rng(5).integers(-14, 15, gt.shape), 0, 255).astype(np.uint8)
    suffix = ".mp4" if codec == "libx264" else ".mkv"
    for role, frames in (("sr", sr), ("gt", gt)):
        write_video(tmp_path / f"{role}{suffix}", frames, codec, pixel_format, **tags)
    sources = {role: tmp_path / f"{role}{suffix}" for role in ("sr", "gt")}
    expected = ffmpeg_vmaf_of_files(sources["sr"], sources["gt"], "vmaf_v0.6.1", tmp_path)
    decoded = {role: torch.from_numpy(read_clip(path)[0]).permute(0, 3, 1, 2) for role, path in sources.items()}
    got = losses.score_clip(decoded["sr"], decoded["gt"], metrics=["vmaf"], sources=sources)
    assert got["per_frame"]["vmaf"].tolist() == pytest.approx(expected, abs=1e-4)
    assert got["details"]["vmaf"]["source"]["pix_fmt"] == pixel_format and "no conversion" in got["details"]["vmaf"]["yuv"]
    if content == "saturated":  # the RGB round trip is another number here
        assert abs(losses.score_clip(decoded["sr"], decoded["gt"], metrics=["vmaf"])["per_clip"]["vmaf"] - np.mean(expected)) > 1e-3


def test_vmaf_of_videos_of_different_pixel_formats_is_refused(photos, tmp_path, server):
    import httpx

    from losses.clips.vmaf import FormatMismatch

    gt = photo_clip(photos[0])
    write_video(tmp_path / "sr.mkv", gt, "ffv1", "yuv420p10le")
    write_video(tmp_path / "gt.mkv", gt, "ffv1", "yuv420p")
    frames = torch.from_numpy(gt).permute(0, 3, 1, 2)
    with pytest.raises(FormatMismatch, match="pix_fmt yuv420p10le vs yuv420p"):
        losses.score_clip(frames, frames, metrics=["vmaf"], sources={"sr": tmp_path / "sr.mkv", "gt": tmp_path / "gt.mkv"})
    files = [("sr", (tmp_path / "sr.mkv").read_bytes()), ("gt", (tmp_path / "gt.mkv").read_bytes())]
    response = httpx.post(f"{server.url}/v1/score/clip", files=files, data=dict(metrics="vmaf"), timeout=120)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "gt"]
    assert "yuv420p10le vs yuv420p" in response.json()["detail"][0]["msg"]


def test_vmaf_of_uploaded_videos_through_the_server_is_ffmpegs(photos, tmp_path, server):
    import httpx

    gt = saturated_clip()
    sr = np.clip(gt.astype(int) + np.random.default_rng(6).integers(-14, 15, gt.shape), 0, 255).astype(np.uint8)
    for role, frames in (("sr", sr), ("gt", gt)):
        write_video(tmp_path / f"{role}.mp4", frames, "libx264", "yuv420p", colorspace=1)
    expected = ffmpeg_vmaf_of_files(tmp_path / "sr.mp4", tmp_path / "gt.mp4", "vmaf_v0.6.1", tmp_path)
    files = [("sr", (tmp_path / "sr.mp4").read_bytes()), ("gt", (tmp_path / "gt.mp4").read_bytes())]
    response = httpx.post(f"{server.url}/v1/score/clip", files=files, data=dict(metrics="psnr,vmaf"), timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["per_frame"]["vmaf"] == pytest.approx(expected, abs=1e-4)
    assert response.json()["vmaf"]["vmaf"]["source"]["pix_fmt"] == "yuv420p"
