"""Clips from disk: lossless FFV1 decodes to exactly the frames it was made from, H.264 to the
frames FFmpeg itself gives (imageio-ffmpeg's binary, ``-pix_fmt rgb24``), frames sort by the
number in their name, and a frame of another size is refused naming the clip and the frame."""

from __future__ import annotations

import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

import losses
from losses.video import frame_paths, read_clip


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
