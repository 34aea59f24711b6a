"""The files of an ``eval`` run: models' folders, images paired by stem across roles, a folder
read as one set."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".npy"}


@dataclass
class Pairing:
    pairs: dict[str, dict[str, Path]] = field(default_factory=dict)  # stem → role → file
    unpaired: dict[str, list[str]] = field(default_factory=dict)  # role → file names
    ambiguous: list[str] = field(default_factory=list)


def by_stem(directory: Path, suffix: str) -> tuple[dict[str, Path], list[str]]:
    """A folder's images by stem (``suffix`` stripped), and the stems that appear twice."""
    found: dict[str, Path] = {}
    ambiguous = []
    for path in sorted(directory.iterdir()):
        # Hidden files are not images of the set: macOS leaves "._img0.png" (AppleDouble
        # metadata) beside every file copied from its disks, which would pair and fail to decode.
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = path.stem.removesuffix(suffix) if suffix else path.stem
        if stem in found:
            ambiguous.append(f"{directory.name}/{path.name} and {found[stem].name} share the stem {stem!r}")
            continue
        found[stem] = path
    return found, ambiguous


def pair_folders(dirs: dict[str, Path], suffixes: dict[str, str]) -> Pairing:
    """Pair files by stem across the given role directories: a pair has a file in every one (sr
    always; gt, lr and teacher where given)."""
    listings = {}
    pairing = Pairing()
    for role, directory in dirs.items():
        listings[role], ambiguous = by_stem(directory, suffixes.get(role, ""))
        pairing.ambiguous += ambiguous
    stems = set.intersection(*(set(listing) for listing in listings.values()))
    for stem in sorted(stems):
        pairing.pairs[stem] = {role: listing[stem] for role, listing in listings.items()}
    for role, listing in listings.items():
        left = sorted(path.name for stem, path in listing.items() if stem not in stems)
        if left:
            pairing.unpaired[role] = left
    return pairing


def set_paths(directory: Path, suffix: str) -> list[Path]:
    """A folder's images as one set (fid, kid), in file-name order: no pairing needed."""
    return sorted(by_stem(directory, suffix)[0].values())


def parse_models(values: tuple[str, ...]) -> dict[str, Path]:
    """``--sr NAME=DIR`` (repeatable) or a single ``--sr DIR`` (named after the folder)."""
    models: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep:
            name, directory = Path(value).name or "sr", value
        if not name or name in models:
            raise ValueError(f"--sr {value!r}: {'empty' if not name else 'repeated'} model name; use --sr NAME=DIR")
        models[name] = Path(directory)
    return models


def check_folders(models: dict[str, Path], references: dict[str, Path]) -> None:
    for label, directory in [*((f"--sr {m}", d) for m, d in models.items()), *((f"--{r}", d) for r, d in references.items())]:
        if not directory.is_dir():
            raise ValueError(f"{label} {directory}: not a directory")
