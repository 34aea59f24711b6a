"""How long `loss-service report` takes at 1,000 images × 5 models, and how large the page is.

`uv run python benchmarks/report_scale.py` writes ×4 bicubic/Lanczos/nearest upscales of
scikit-image's colour photos to a temporary folder, an eval JSON whose 1,000 images per model
point at them (the gallery reads real files), times the report command and prints one JSON line.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel")
FILTERS = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}


def write_photos(root: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    gts, srs = [], {name: [] for name in FILTERS}
    for name in PHOTOS:
        pixels = getattr(data, name)()[..., :3]
        side = min(pixels.shape[:2] + (480,)) // 4 * 4
        top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
        gt = Image.fromarray(pixels[top : top + side, left : left + side].astype(np.uint8))
        gts.append(root / f"{name}.png")
        gt.save(gts[-1])
        lr = gt.resize((side // 4, side // 4), Image.BICUBIC)
        for method, resample in FILTERS.items():
            srs[method].append(root / f"{name}_{method}.png")
            lr.resize((side, side), resample).save(srs[method][-1])
    return gts, srs


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        gts, srs = write_photos(root)
        models = {}
        for i in range(5):
            pool = srs[list(FILTERS)[i % 3]]
            results = [
                dict(
                    image=f"img{k:04d}",
                    warnings=[],
                    paths=dict(sr=str(pool[k % len(pool)]), gt=str(gts[k % len(gts)])),
                    scores=dict(
                        psnr=28 + 0.2 * i + rng.normal(0, 1),
                        ssim=0.8 + rng.normal(0, 0.02),
                        lpips_alex=0.2 - 0.01 * i + rng.normal(0, 0.02),
                        dists=0.15 + rng.normal(0, 0.01),
                    ),
                )
                for k in range(1000)
            ]
            models[f"model{i}"] = dict(results=results, failures=[])
        results = root / "big.json"
        results.write_text(
            json.dumps(
                dict(
                    format="loss-service-eval",
                    version=2,
                    dataset="Big",
                    scale=4,
                    models=models,
                    metrics=["psnr", "ssim", "lpips_alex", "dists"],
                    conventions=dict(pretrained=True),
                    lower_is_better=dict(psnr=False, ssim=False, lpips_alex=True, dists=True),
                )
            )
        )
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "report",
                str(results),
                "--html",
                str(root / "big.html"),
                "--markdown",
                str(root / "big.md"),
                "--latex",
                str(root / "big.tex"),
            ],
            check=True,
        )
        seconds = time.perf_counter() - started
        print(
            json.dumps(
                dict(
                    images=1000,
                    models=5,
                    metrics=4,
                    seconds=round(seconds, 1),
                    html_mib=round((root / "big.html").stat().st_size / 2**20, 2),
                )
            )
        )


if __name__ == "__main__":
    main()
