"""argparse types shared by the command line's parsers: a bounded number and a JSON object, each
refused as a usage error (exit 2) before anything runs."""

from __future__ import annotations

import argparse
import math

from .errors import parse_json_object


def json_object_argument(text: str) -> dict:
    """``--options``: a JSON object, refused by argparse (exit 2) when it is not one."""
    try:
        return parse_json_object(text, "'{\"crop_border\": 4}'")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def number(kind: type, minimum: float, above: bool = False):
    """An argparse type: a finite ``kind`` of at least ``minimum`` (strictly above with ``above``),
    so ``--concurrency 0`` or ``--seed -1`` is a usage error, not a traceback mid-run."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {minimum}, got {text}")
        return value

    return parse


def add_scoring_server_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """``--url`` (repeatable), or without it the flags of the server started in this process."""
    parser.add_argument(
        "--url",
        action="append",
        help=f"server base URL; repeat to spread over replicas. Without it, {command} scores in this process (server extra) "
        "with the server's own steps, on a loopback port for the run",
    )
    parser.add_argument("--device", default="auto", help="without --url: auto, cpu, cuda, cuda:N")
    parser.add_argument("--weights-dir", default=None, help="without --url: directory searched first for checkpoints")
    parser.add_argument("--random-weights", action="store_true", help="without --url: explicit opt-in to random backbone weights")


def add_ray_arguments(parser: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    """``--ray [ADDRESS]``, ``--ray-actors`` and ``--ray-batch-size`` (eval and filter)."""
    group = parser.add_argument_group("on a Ray cluster (the server and ray extras)")
    group.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help=f"score {what} on Ray Data: decoding as CPU tasks, scoring in actors that load the models once "
        "(one GPU each where there are GPUs); ADDRESS joins a cluster (e.g. auto or ray://head:10001), none starts a local one",
    )
    group.add_argument("--ray-actors", type=number(int, 1), default=2, help="scoring actors (default 2)")
    group.add_argument("--ray-batch-size", type=number(int, 1), default=8, help="images per actor call (default 8)")
    return group
