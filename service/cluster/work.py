"""What runs on the Ray workers: decoding a pair of files (a CPU task) and scoring a batch of
decoded pairs (an actor that loads the models once). Nothing here knows Ray's API."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

ROLES = ("sr", "gt", "lr", "teacher")
NO_PIXELS = np.zeros((0, 0, 3), np.float32)  # a role that could not be decoded


def decode_pair(item: dict) -> dict:
    """The item with each role's pixels (H×W×3 float32 in [0, 1], as the server decodes an
    upload), or its ``error`` naming the file that could not be read."""
    from ..common.decode import decode
    from ..common.errors import ServiceError

    out = dict(item, error="")
    for role in ROLES:
        path = item.get(f"path_{role}")
        if path is None:
            continue
        out[role] = NO_PIXELS  # every row of a column holds an array, or Arrow cannot type it
        if out["error"]:
            continue
        try:
            with open(path, "rb") as handle:
                out[role] = decode(handle.read(), role).pixels
        except (OSError, ServiceError, ValueError) as exc:
            out["error"] = f"{role} {path}: {exc}"
    return out


class Scorer:
    """An actor's models (built when it starts, and kept) and ``losses.score`` over the
    batch's pairs, one call per group of equal image sizes. A pair that fails keeps its error."""

    def __init__(self, metrics: list[str], options: dict, device: str, weights_dir: str | None, pretrained: bool):
        from losses import get_backbone
        from losses.plan import make_plan

        self.metrics, self.options, self.device, self.weights_dir = list(metrics), dict(options), device, weights_dir
        self.pretrained = pretrained
        for name in sorted(make_plan(self.metrics, self.options).backbones()):  # loaded once, here
            get_backbone(name, device, pretrained, weights_dir)

    def __call__(self, batch):
        import pandas as pd

        rows = batch.to_dict("records")
        results = {index: dict(scores="{}", warnings="[]", error=row.get("error") or "") for index, row in enumerate(rows)}
        groups = defaultdict(list)
        for index, row in enumerate(rows):
            if not results[index]["error"]:
                roles = tuple(role for role in ROLES if isinstance(row.get(role), np.ndarray))
                groups[tuple((role, row[role].shape) for role in roles)].append(index)
        for key, indices in groups.items():
            self._score_group([role for role, _ in key], [rows[i] for i in indices], [results[i] for i in indices])
        return pd.DataFrame(
            dict(
                model=[row["model"] for row in rows],
                image=[row["image"] for row in rows],
                scores=[results[i]["scores"] for i in range(len(rows))],
                warnings=[results[i]["warnings"] for i in range(len(rows))],
                error=[results[i]["error"] for i in range(len(rows))],
                paths=[json.dumps({role: row[f"path_{role}"] for role in ROLES if row.get(f"path_{role}")}) for row in rows],
            )
        )

    def _score_group(self, roles: list[str], rows: list[dict], results: list[dict]) -> None:
        import torch

        import losses

        images = {role: torch.from_numpy(np.stack([row[role] for row in rows])).permute(0, 3, 1, 2).to(self.device) for role in roles}
        try:
            with torch.inference_mode():
                scores = losses.score(
                    **images,
                    metrics=self.metrics,
                    device=self.device,
                    pretrained=self.pretrained,
                    weights_dir=self.weights_dir,
                    **self.options,
                )
        except ValueError as exc:  # a metric that cannot take these images: every pair of the group says so
            for result in results:
                result["error"] = str(exc)
            return
        for index, result in enumerate(results):
            values = {name: _finite(value[index].item()) for name, value in scores.items()}
            result["scores"] = json.dumps(values)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


class Extractor:
    """An actor's set-metric extractor (InceptionV3, built once) over a batch of decoded images:
    each image's feature row as little-endian float32 bytes (the network's own values, so nothing
    is lost), or its error. The driver merges the rows' ``FeatureStats`` (service/cluster/sets.py)."""

    def __init__(self, metrics: list[str], options: dict, device: str, weights_dir: str | None, pretrained: bool):
        from losses import SetExtractor, get_backbone

        self.extractor = SetExtractor(metrics, device, pretrained, weights_dir, **options)
        for name in sorted(self.extractor.plan.backbones()):  # loaded once, here
            get_backbone(name, device, pretrained, weights_dir)

    def __call__(self, batch):
        import pandas as pd
        import torch

        rows = batch.to_dict("records")
        features = [b""] * len(rows)
        errors = [row.get("error") or "" for row in rows]
        groups = defaultdict(list)
        for index, row in enumerate(rows):
            if not errors[index]:
                groups[row["sr"].shape].append(index)
        for indices in groups.values():
            images = torch.from_numpy(np.stack([rows[i]["sr"] for i in indices])).permute(0, 3, 1, 2)
            try:
                values = self.extractor.rows(images)
            except ValueError as exc:  # an image the extractor cannot take: the group says so
                for i in indices:
                    errors[i] = str(exc)
                continue
            for i, row in zip(indices, values.astype("<f4")):  # float32 values held in float64: exact
                features[i] = row.tobytes()
        return pd.DataFrame(
            dict(
                side=[row["side"] for row in rows],
                model=[row["model"] for row in rows],
                path=[row["path_sr"] for row in rows],
                features=features,
                error=errors,
                **{key: [value] * len(rows) for key, value in self.extractor.meta.items()},
            )
        )


class ClipScorer:
    """An actor's clip metrics (models built when it starts) over a batch of clips: each clip's
    frames (folders of frames or a video file per role) read and scored as the server's
    ``/v1/score/clip`` reads and scores an upload (``service/server/clips.py``), the answer as JSON,
    or its error."""

    def __init__(self, metrics: list[str], options: dict, device: str, weights_dir: str | None, pretrained: bool):
        from losses import get_backbone
        from losses.clips.scoring import CLIP_KINDS
        from losses.plan import make_plan

        self.plan = make_plan(list(metrics), dict(options), kinds=CLIP_KINDS)
        self.setup = dict(device=device, pretrained=pretrained, weights_dir=weights_dir)
        for name in sorted(self.plan.backbones()):  # loaded once, here
            get_backbone(name, device, pretrained, weights_dir)

    def __call__(self, batch):
        import pandas as pd

        from ..common.errors import ServiceError

        rows = batch.to_dict("records")
        answers, errors = [], []
        for row in rows:
            try:
                answers.append(json.dumps(self._score({role: json.loads(row[role]) for role in ("sr", "gt")})))
                errors.append("")
            except (OSError, ValueError, ServiceError) as exc:  # a file, a frame size, a metric that cannot take the clip
                answers.append("{}")
                errors.append(getattr(exc, "message", str(exc)))
        return pd.DataFrame(dict(model=[row["model"] for row in rows], clip=[row["clip"] for row in rows], answer=answers, error=errors))

    def _score(self, files: dict[str, list[str]]) -> dict:
        from ..common.decode import decode
        from ..server import clips

        uploads = {role: [Path(path).read_bytes() for path in paths] for role, paths in files.items()}
        decoded = {role: clips.frames_of(uploads[role], role, lambda data, field: decode(data, field), None) for role in uploads}
        clips.check_clips(decoded)
        with clips.video_sources(uploads) as sources:
            return clips.score(self.plan, decoded, sources, **self.setup)
