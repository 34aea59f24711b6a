"""``loss-service report``: statistics against direct computations, tables against the JSON
numbers, an offline self-contained page, and a real browser's rendering of it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from service.cli import main as cli_main
from service.client.report import Report, decimals, largest_error_crop, latex, load_runs, markdown, worst_images
from service.client.stats import bootstrap_mean_ci, compare_paired

LOWER = dict(psnr=False, ssim=False, lpips_alex=True)


def test_bootstrap_matches_a_numpy_loop_with_the_same_seed():
    values = np.random.default_rng(3).normal(30.0, 2.0, 3000)  # large enough that the draws come in chunks
    rng = np.random.default_rng(11)
    means = [values[rng.integers(0, values.size, values.size)].mean() for _ in range(2000)]
    expected = np.percentile(means, [2.5, 97.5])
    assert bootstrap_mean_ci(values, seed=11, resamples=2000) == pytest.approx(tuple(expected), rel=0, abs=1e-12)
    assert bootstrap_mean_ci(values, seed=12, resamples=2000) != bootstrap_mean_ci(values, seed=11, resamples=2000)


def test_paired_comparison_against_scipy_and_direct_counts():
    rng = np.random.default_rng(5)
    a = rng.normal(30.0, 1.0, 40)
    b = a - rng.normal(0.05, 0.2, 40)
    b[:3] = a[:3]  # three exact ties
    c = compare_paired(a, b, lower_is_better=False, seed=2, resamples=500)
    diff = a - b
    assert c.p_value == pytest.approx(wilcoxon(diff).pvalue, rel=1e-12)
    assert (c.wins, c.ties, c.losses) == (int((diff > 0).sum()), 3, int((diff < 0).sum()))
    assert c.mean_diff == pytest.approx(diff.mean(), rel=1e-12)
    assert (c.ci_low, c.ci_high) == bootstrap_mean_ci(diff, seed=2, resamples=500)
    flipped = compare_paired(a, b, lower_is_better=True, seed=2, resamples=500)
    assert (flipped.wins, flipped.losses) == (c.losses, c.wins)
    assert compare_paired(a, a, lower_is_better=False).p_value is None  # no difference at all: no test


def test_statistics_default_to_seed_0_and_take_any_numbers_as_float64():
    """A report's intervals are reproducible from the documented loop with seed 0; values given as
    float32 or 8-bit integers are the same numbers in float64 (no float32 means, no wrap-around)."""
    rng = np.random.default_rng(8)
    values = rng.normal(30.0, 2.0, 50)
    assert bootstrap_mean_ci(values) == bootstrap_mean_ci(values, seed=0) != bootstrap_mean_ci(values, seed=1)
    single = values.astype(np.float32)
    assert bootstrap_mean_ci(single) == bootstrap_mean_ci(single.astype(np.float64))
    a, b = values.astype(np.float32), (values - rng.normal(0.3, 0.1, 50)).astype(np.float32)
    assert compare_paired(a, b, lower_is_better=False) == compare_paired(a.astype(np.float64), b.astype(np.float64), lower_is_better=False)
    assert compare_paired(a, b, lower_is_better=False) != compare_paired(a, b, lower_is_better=False, seed=1)
    eight_bit = compare_paired(np.array([200, 10, 7], np.uint8), np.array([10, 200, 7], np.uint8), lower_is_better=False)
    assert eight_bit.mean_diff == 0.0 and (eight_bit.wins, eight_bit.ties, eight_bit.losses) == (1, 1, 1)
    flipped = compare_paired(np.array([10, 7], np.uint8), np.array([200, 7], np.uint8), lower_is_better=False)
    assert flipped.mean_diff == -95.0 and flipped.losses == 1


def test_statistics_of_no_image_and_of_one():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" either
        assert all(np.isnan(bootstrap_mean_ci([])))
        empty = compare_paired([], [], lower_is_better=True)
    assert empty.count == 0 and np.isnan(empty.mean_diff) and np.isnan(empty.ci_low) and np.isnan(empty.ci_high)
    assert (empty.wins, empty.ties, empty.losses, empty.p_value) == (0, 0, 0, None)
    assert bootstrap_mean_ci([31.25]) == (31.25, 31.25)  # every resample is the one value


@pytest.mark.parametrize(("a", "b"), [([1.0, 2.0, 3.0], [1.0, 2.0]), ([[1.0, 2.0]], [[1.0, 3.0]])], ids=["lengths", "2-D"])
def test_paired_values_must_be_two_1d_arrays_of_one_length(a, b):
    shapes = f"got {np.shape(a)} and {np.shape(b)}"
    with pytest.raises(ValueError, match=re.escape(f"paired values must be two 1-D arrays of one length, {shapes}")):
        compare_paired(a, b, lower_is_better=False)


def write_png(path: Path, pixels: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return str(path)


def eval_json(
    tmp_path: Path, dataset: str, scale: int, models: dict[str, float], images: int = 6, pretrained: bool = True, pool: int | None = None
) -> Path:
    """An eval results file as ``loss-service eval`` writes it, with real image files behind the paths.

    ``models`` maps a name to a noise level: more noise, lower PSNR. ``pool`` reuses that many
    image files for every image (a large synthetic run without thousands of files)."""
    rng = np.random.default_rng(zlib.crc32(f"{dataset}x{scale}".encode()))
    entries = {}
    files = pool or images
    gts = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(files)]
    gt_paths = [write_png(tmp_path / dataset / f"gt{i}.png", g) for i, g in enumerate(gts)]
    for name, noise in models.items():
        results = []
        sr_paths = []
        for i, gt in enumerate(gts):
            sr = np.clip(gt.astype(int) + rng.normal(0, noise, gt.shape).round().astype(int), 0, 255).astype(np.uint8)
            sr[10:20, 30:40] = 0  # a dark block: the largest error, where the gallery crop must centre
            sr_paths.append(write_png(tmp_path / dataset / name / f"img{i}.png", sr))
        for i in range(images):
            scores = dict(
                psnr=float(30 - noise / 4 + rng.normal(0, 0.5)),
                ssim=float(0.9 - noise / 200 + rng.normal(0, 0.01)),
                lpips_alex=float(0.1 + noise / 100 + rng.normal(0, 0.01)),
            )
            results.append(dict(image=f"img{i}", scores=scores, warnings=[], paths=dict(sr=sr_paths[i % files], gt=gt_paths[i % files])))
        entries[name] = dict(sr_dir=str(tmp_path / dataset / name), results=results, failures=[])
    data = dict(
        format="loss-service-eval",
        version=2,
        dataset=dataset,
        scale=scale,
        metrics=["psnr", "ssim", "lpips_alex"],
        lower_is_better=LOWER,
        conventions=dict(pretrained=pretrained, device="cpu", version="test"),
        models=entries,
    )
    path = tmp_path / f"{dataset}_x{scale}.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def two_datasets(tmp_path):
    return [eval_json(tmp_path, "Set5", 4, dict(EDSR=6.0, SwinIR=3.0)), eval_json(tmp_path, "Urban100", 4, dict(EDSR=8.0, SwinIR=5.0))]


def expected_means(paths) -> dict[tuple[str, str, str], float]:
    means = {}
    for path in paths:
        data = json.loads(path.read_text())
        for model, entry in data["models"].items():
            for metric in data["metrics"]:
                means[f"{data['dataset']} ×{data['scale']}", model, metric] = np.mean([r["scores"][metric] for r in entry["results"]])
    return means


def test_markdown_and_latex_tables_carry_the_json_means(two_datasets):
    report = Report.build([run for p in two_datasets for run in load_runs(p)], seed=0, resamples=200)
    means = expected_means(two_datasets)
    md = markdown(report)
    for group in ("Set5 ×4", "Urban100 ×4"):
        block = md.split(f"### {group}")[1].split("###")[0]
        header = [c.strip() for c in block.strip().splitlines()[0].strip("|").split("|")]
        assert header == ["Model", "psnr ↑", "ssim ↑", "lpips_alex ↓"]
        for line in block.strip().splitlines()[2:]:
            model, *cells = [c.strip() for c in line.strip("|").split("|")]
            for metric, cell in zip(("psnr", "ssim", "lpips_alex"), cells):
                value = means[group, model, metric]
                assert cell.strip("*") == f"{value:.{decimals(metric)}f}"
                others = [means[group, m, metric] for m in ("EDSR", "SwinIR")]
                best = min(others) if LOWER[metric] else max(others)
                assert cell.startswith("**") == (value == best), (group, model, metric)
    tex = latex(report)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and "lpips\\_alex $\\downarrow$" in tex
    rows = {line.split(" & ")[0]: line.rstrip(" \\").split(" & ")[1:] for line in tex.splitlines() if line.startswith(("EDSR", "SwinIR"))}
    for model, cells in rows.items():
        expected = [means[g, model, m] for g in ("Set5 ×4", "Urban100 ×4") for m in ("psnr", "ssim", "lpips_alex")]
        numbers = [float(re.sub(r"\\textbf\{(.*)\}", r"\1", c)) for c in cells]
        assert numbers == [float(f"{v:.{decimals(m)}f}") for v, m in zip(expected, ["psnr", "ssim", "lpips_alex"] * 2)]


def test_a_pipe_in_a_model_name_stays_in_its_markdown_cell(tmp_path):
    report = Report.build(load_runs(eval_json(tmp_path, "Set5", 4, {"EDSR|lite": 6.0, "SwinIR": 3.0})), seed=0, resamples=200)
    row = next(line for line in markdown(report).splitlines() if line.startswith("| EDSR"))
    assert row.startswith(r"| EDSR\|lite |") and len(re.split(r"(?<!\\)\|", row.strip("|"))) == 1 + len(report.metrics)


def test_a_mean_that_left_out_infinite_scores_is_marked(tmp_path):
    """An SR image identical to its GT has PSNR +inf (null in the JSON): the mean is over the
    finite values only, and the tables must say so rather than print it like any other mean."""
    from service.client.report import html_table

    path = eval_json(tmp_path, "Set5", 4, dict(EDSR=6.0, SwinIR=3.0))
    data = json.loads(path.read_text())
    data["models"]["SwinIR"]["results"][0]["scores"]["psnr"] = None
    path.write_text(json.dumps(data))
    report = Report.build(load_runs(path), seed=0, resamples=200)
    cell = report.cells["Set5 ×4", "SwinIR", "psnr"]
    finite = [r["scores"]["psnr"] for r in data["models"]["SwinIR"]["results"][1:]]
    assert (cell.count, cell.scored, cell.partial) == (5, 6, True) and cell.mean == pytest.approx(np.mean(finite), rel=1e-12)
    assert not report.cells["Set5 ×4", "EDSR", "psnr"].partial and not report.cells["Set5 ×4", "SwinIR", "ssim"].partial
    md = markdown(report)
    swinir = next(line for line in md.splitlines() if line.startswith("| SwinIR"))
    assert swinir.split("|")[2].strip().endswith("†") and "†" not in swinir.split("|")[3]
    assert "(SwinIR: psnr n = 5 of 6)" in md and md.count("†") == 2
    tex = latex(report)
    assert r"$^\dagger$" in tex and "±" not in tex and r"$\pm$inf" in tex  # pdflatex has no ± without a package
    assert "n = 5 of 6" in html_table(report, "Set5 ×4")


def test_html_is_self_contained_and_complete(two_datasets, tmp_path):
    out = tmp_path / "report.html"
    args = [
        "report",
        *map(str, two_datasets),
        "--html",
        str(out),
        "--markdown",
        str(tmp_path / "r.md"),
        "--latex",
        str(tmp_path / "r.tex"),
        "--worst",
        "2",
        "--resamples",
        "200",
    ]
    assert cli_main(args) == 0
    page = out.read_text()
    assert not re.search(r"https?://", page), re.search(r".{60}https?://.{60}", page).group(0)
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", page)  # every resource inline, every link an anchor
    assert page.count("<svg") == 1 + 3  # the perception–distortion plot, one distribution plot per metric
    assert "<table" in page and "Paired comparisons" in page and "Wilcoxon" in page
    assert page.count('<div class="entry">') == 3 * 2 * 2  # metrics × models × worst 2
    assert page.count("data:image/png;base64,") == 3 * 2 * 2 * 3  # GT, SR, heat map each
    assert "RANDOM BACKBONE WEIGHTS" not in page
    assert "Set5 ×4" in page and "Urban100 ×4" in page
    random = eval_json(tmp_path / "random", "Set14", 2, dict(EDSR=5.0), pretrained=False)
    assert cli_main(["report", str(random), "--html", str(out), "--resamples", "100"]) == 0
    assert "RANDOM BACKBONE WEIGHTS in EDSR (Set14 ×2)" in out.read_text()


def test_report_refuses_what_it_cannot_build(two_datasets, tmp_path, capsys):
    assert cli_main(["report", str(two_datasets[0])]) == 2  # no output chosen
    assert cli_main(["report", str(two_datasets[0]), str(two_datasets[0]), "--html", str(tmp_path / "x.html")]) == 2
    assert "same model" in capsys.readouterr().err
    assert cli_main(["report", str(two_datasets[0]), "--html", str(tmp_path / "x.html"), "--x", "dists"]) == 2


def test_worst_images_follow_each_metric_direction_over_a_models_datasets(two_datasets):
    runs = [run for path in two_datasets for run in load_runs(path) if run.model == "EDSR"]
    for metric, lower in (("psnr", False), ("lpips_alex", True)):
        every = sorted((s[metric] for run in runs for s in run.scores.values()), reverse=lower)
        picked = worst_images(runs, metric, lower, 3)
        assert [value for _, _, value in picked] == every[:3]
        assert all(run.scores[image][metric] == value for run, image, value in picked)


def test_gallery_crop_centres_on_the_largest_error():
    gt = np.full((200, 300, 3), 0.5, dtype=np.float32)
    sr = gt.copy()
    sr[150:160, 20:30] = 0.0
    rows, cols = largest_error_crop(sr, gt, 64)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (64, 64)
    assert rows.start <= 150 and rows.stop >= 160 and cols.start == 0  # clamped at the left edge
    assert abs((rows.start + rows.stop) / 2 - 155) <= 1


def test_large_report_stays_small(tmp_path):
    """1,000 images × 5 models: the gallery is bounded by K, the file stays under 25 MB.
    (The build time is a figure for BENCHMARKS.md, printed here, not asserted.)"""
    path = eval_json(tmp_path, "BSD100", 4, {f"model{i}": 2.0 + i for i in range(5)}, images=1000, pool=12)
    started = time.perf_counter()
    out = tmp_path / "big.html"
    assert cli_main(["report", str(path), "--html", str(out)]) == 0
    print(f"1000 images × 5 models: report built in {time.perf_counter() - started:.1f} s, {out.stat().st_size / 2**20:.2f} MiB")
    assert out.stat().st_size < 25 * 2**20


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: `apt-get install -y chromium` (Debian) runs this test")
def test_chromium_renders_the_table_and_a_plot(two_datasets, tmp_path):
    out = tmp_path / "report.html"
    assert cli_main(["report", *map(str, two_datasets), "--html", str(out), "--worst", "1", "--resamples", "200"]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1400",
            f"--screenshot={shot}",
            out.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20, "blank screenshot"

    def count(rgb: str, tolerance: int = 6) -> int:
        target = np.array([int(rgb[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - target).max(axis=2) <= tolerance).sum())

    assert count("#e8eef7") > 5000, "no table header visible"  # the results tables' header rows
    assert count("#dff3e4") > 500, "no best-value cell visible"
    assert count("#1f77b4") > 100 and count("#ff7f0e") > 100, "no plot markers visible"  # the two models' colours


@pytest.mark.parametrize("order", [("Sharp", "Blurry"), ("Blurry", "Sharp")])
def test_the_paired_verdict_names_the_clearly_better_model_in_both_metric_directions(tmp_path, order):
    """10 images where one model wins every image: the exact Wilcoxon p is 2/2¹⁰, and the reading
    names that model for PSNR (higher is better) and for LPIPS (lower is better), whichever is A."""
    from service.client.report.page import html_paired

    noise = dict(Sharp=1.0, Blurry=30.0)
    path = eval_json(tmp_path, "Set14", 4, {name: noise[name] for name in order}, images=10)
    report = Report.build(load_runs(path), resamples=200)
    group = report.runs[0].group
    page = html_paired(report, group)
    for metric, lower in (("psnr", False), ("lpips_alex", True)):
        ((a, b, c),) = report.paired(group, metric)
        assert (a, b) == order and report.lower_is_better[metric] is lower
        data = json.loads(path.read_text())["models"]
        diff = [x["scores"][metric] - y["scores"][metric] for x, y in zip(data[a]["results"], data[b]["results"])]
        assert c.count == 10 and c.p_value == pytest.approx(wilcoxon(diff).pvalue, rel=1e-12) and c.p_value == pytest.approx(2 / 2**10)
        assert (c.wins, c.losses) == ((10, 0) if a == "Sharp" else (0, 10))
        section = page.split(f"<h3>{metric} ")[1].split("</table>")[0]
        assert "Sharp better" in section and "Blurry better" not in section and "no clear difference" not in section
