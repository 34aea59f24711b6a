"""Reading clips from disk (losses/clips/video.py), in this process: frame order and selection,
what a video's reading records, the frames × pixels limit at its boundary, the declared colour
conversion applied, and each refusal's wording. (Clips scored, and read through the server, are
in test_video.py.)"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image

from losses.clips.video import FRAME_SUFFIXES, VIDEO_SUFFIXES, ClipTooLarge, frame_number, frame_paths, read_clip, read_video

from .test_video import photo_clip, write_video


def test_a_frame_without_a_number_sorts_first_and_hidden_or_other_files_are_left_out(photos, tmp_path):
    frames = photo_clip(photos[0], frames=3, size=(32, 32))
    for name, frame in zip(("cover.png", "0.png", "1.PNG"), frames):
        Image.fromarray(frame).save(tmp_path / name)
    Image.fromarray(frames[0]).save(tmp_path / ".2.png")  # hidden
    (tmp_path / "3.txt").write_text("notes")
    assert frame_number("cover.png") == -1 and frame_number("im10.png") == 10
    assert [path.name for path in frame_paths(tmp_path)] == ["cover.png", "0.png", "1.PNG"]


def test_a_folder_of_frames_records_how_it_was_read_and_greyscale_frames_become_rgb(photos, tmp_path):
    frames = photo_clip(photos[1], frames=3, size=(24, 40))
    for index, frame in enumerate(frames):
        Image.fromarray(frame[..., 0]).save(tmp_path / f"{index}.png")  # one channel
    decoded, how = read_clip(tmp_path)
    assert decoded.shape == (3, 24, 40, 3) and np.array_equal(decoded[..., 1], frames[..., 0])
    assert how == dict(source="frames", frames=3, order="by the number in the name")


def test_a_folder_refusal_names_the_folder_and_the_frame(photos, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as refused:
        read_clip(tmp_path / "empty")
    assert str(refused.value) == f"{tmp_path / 'empty'}: no frames ({', '.join(FRAME_SUFFIXES)})"
    clip = tmp_path / "clip"
    clip.mkdir()
    frames = photo_clip(photos[0], frames=3, size=(40, 40))
    Image.fromarray(frames[0]).save(clip / "0.png")
    Image.fromarray(frames[1][:30]).save(clip / "1.png")
    with pytest.raises(ValueError) as refused:
        read_clip(clip)
    assert str(refused.value) == f"{clip}: frame 1.png is 40×30 but the clip's first frame is 40×40"
    (clip / "1.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=rf"^{clip}: frame 1\.png cannot be read \("):
        read_clip(clip)
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError) as refused:
        read_clip(tmp_path / "clip.gif")
    assert str(refused.value) == f"{tmp_path / 'clip.gif'}: not a folder of frames or a video ({', '.join(VIDEO_SUFFIXES)})"


@pytest.mark.parametrize(
    "codec, written, suffix, read_as, codec_name",
    [("ffv1", "bgr0", ".mkv", "bgr0", "ffv1"), ("png", "rgb24", ".mov", "rgb24", "png"), ("libx264rgb", "rgb24", ".mkv", "gbrp", "h264")],
)
def test_an_rgb_video_is_read_without_conversion_and_says_so(photos, tmp_path, codec, written, suffix, read_as, codec_name):
    frames = photo_clip(photos[2], frames=4, size=(32, 48))
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, codec, written)
    decoded, how = read_clip(path)
    if codec != "libx264rgb":  # lossless: the frames themselves
        assert np.array_equal(decoded, frames)
    expected = dict(pixel_format=read_as, rgb_source=True, matrix=None, range=None, declared=True, frames=4, codec=codec_name)
    assert how == dict(source="video", **expected)


def test_a_yuv_video_without_tags_is_read_as_bt601_limited_and_records_it(photos, tmp_path):
    frames = photo_clip(photos[1], frames=3, size=(32, 48))
    path = tmp_path / "clip.mp4"
    write_video(path, frames, "libx264", "yuv420p")
    _, how = read_video(path)
    assert how == dict(
        pixel_format="yuv420p",
        rgb_source=False,
        matrix="ITU601",
        range="MPEG",
        declared=dict(matrix=False, range=False),
        frames=3,
        codec="h264",
    )


def test_a_declared_matrix_and_range_are_the_ones_applied(photos, tmp_path):
    frames = photo_clip(photos[2], frames=3, size=(32, 48))
    path = tmp_path / "bt709.mp4"
    write_video(path, frames, "libx264", "yuv420p", colorspace=1, color_range=2)  # BT.709, full range
    decoded, _ = read_video(path)
    with av.open(str(path)) as container:
        expected = np.stack(
            [f.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="JPEG").to_ndarray() for f in container.decode(video=0)]
        )
    assert np.array_equal(decoded, expected)


def test_a_video_reads_alike_from_a_file_object(photos, tmp_path):
    frames = photo_clip(photos[0], frames=3, size=(32, 32))
    write_video(tmp_path / "clip.mkv", frames, "ffv1", "bgr0")
    from_file, how = read_video(io.BytesIO((tmp_path / "clip.mkv").read_bytes()))
    assert np.array_equal(from_file, frames) and how["frames"] == 3


def test_the_frames_times_pixels_limit_holds_at_its_boundary(photos, tmp_path):
    frames = photo_clip(photos[0], frames=4, size=(16, 24))
    write_video(tmp_path / "clip.mkv", frames, "ffv1", "bgr0")
    exact = 4 * 16 * 24
    assert read_video(tmp_path / "clip.mkv", max_pixels=exact)[0].shape == (4, 16, 24, 3)
    with pytest.raises(ClipTooLarge) as refused:
        read_video(tmp_path / "clip.mkv", max_pixels=exact - 1)
    assert str(refused.value) == f"more than {exact - 1} frames × pixels at frame 3 (24×16)"


def test_a_video_without_frames_is_refused_naming_it(tmp_path):
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        container.start_encoding()  # the header, and no frame
    with pytest.raises(ValueError) as refused:
        read_video(path)
    assert str(refused.value) == f"{path}: no video frames could be decoded"
