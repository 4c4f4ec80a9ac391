"""The pointing game for every explanation method, through the HTTP API.

    python -m bench.pointing_game [--methods cam,gradcam] [--cases N] [--batch 10] [--seed 0]

Every method in core.explain.METHODS by default; one this model cannot answer (`attention` needs
a model with spatial attention gates) gets an n/a row with the API's reason. The 40 cases of
tests.images.pointing_game_cases (the 20 foolbox ImageNet photos pasted at random places on a plain
and on a noisy canvas) go to POST /v1/models/efficientnet_lite0/explain through a
FastAPI TestClient over the real app, several files per request, with the photo's label as the
target of each file. A hit is a heatmap peak (centroid of the pixels tied at the maximum) inside the
pasted photo's box widened by 15 px (the original pointing game's tolerance); the strict rate uses
no tolerance. Same scoring as tests/api/test_pointing_game.py.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings

from core.explain import METHODS
from support import (POINTING_GAME_BACKGROUNDS, POINTING_TOLERANCE, encode, point_in_box, pointing_game_cases,
                     pointing_hit, upload)

MODEL = "efficientnet_lite0"
# Bounded settings: the defaults (50 steps, 25 samples, Score-CAM over the 1280-channel head, 1000 RISE
# masks) are slow on CPU.
OPTIONS: dict[str, dict[str, object]] = {
    "integrated_gradients": {"steps": 32},
    "smoothgrad": {"samples": 16},
    "scorecam": {"layer": "blocks.15"},
    "rise": {"masks": 500},
}


class Unanswered(Exception):
    """The API refused the method for this model (e.g. `attention` needs spatial attention gates)."""


def play(client, cases, method: str, batch: int) -> tuple[list[bool], list[bool], float]:
    hits, strict = [], []
    started = time.perf_counter()
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        files = [upload(blob, f"case{start + i}.png", "image/png") for i, (blob, _, _) in enumerate(chunk)]
        form = {"method": method, "target": [label for _, _, label in chunk], **OPTIONS.get(method, {})}
        response = client.post(f"/v1/models/{MODEL}/explain", files=files, data=form)
        if response.status_code != 200:
            raise Unanswered(f"HTTP {response.status_code}: {response.json().get('detail', response.text)}")
        for result, (_, box, _) in zip(response.json()["results"], chunk):
            hit, strict_hit = pointing_hit(result["explanation"]["heatmap_png"], box)
            hits.append(hit)
            strict.append(strict_hit)
    return hits, strict, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of: " + ", ".join(METHODS))
    parser.add_argument("--cases", type=int, default=None, help="use only the first N of the 40 cases "
                        "(the first 20 are the plain backgrounds)")
    parser.add_argument("--batch", type=int, default=10, help="files per request (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    composites = list(pointing_game_cases(seed=args.seed))[:args.cases]
    cases = [(encode(image, "PNG", compress_level=1), box, label) for image, box, label in composites]
    sizes = [image.width for image, _, _ in composites]
    per_background = 20  # cases come as 20 photos on each background in turn
    settings = ", ".join(f"{method} {' '.join(f'{k}={v}' for k, v in options.items())}"
                         for method, options in OPTIONS.items())
    print(f"pointing game: {MODEL}, {len(cases)} cases (seed {args.seed}), {args.batch} files per request, "
          f"hit = peak within {POINTING_TOLERANCE} px of the object's box")
    print(f"settings: {settings}; everything else at its default")
    header = f"{'method':<22}{'hits':>8}{'rate':>7}{'strict':>8}" + "".join(
        f"{name:>8}" for name in POINTING_GAME_BACKGROUNDS) + f"{'seconds':>9}"
    print(header)
    print("-" * len(header))
    # what a map that points nowhere scores: a blank heatmap's peak is the centroid of every pixel, the centre
    centre = [(point_in_box(((size - 1) / 2, (size - 1) / 2), box, POINTING_TOLERANCE),
               point_in_box(((size - 1) / 2, (size - 1) / 2), box)) for (_, box, _), size in zip(cases, sizes)]
    _print_row("centre (chance)", [hit for hit, _ in centre], [strict for _, strict in centre], per_background, 0.0)
    with tempfile.TemporaryDirectory() as data_dir, \
            TestClient(base_url="http://localhost", app=create_app(Settings(data_dir=data_dir)), raise_server_exceptions=True) as client:
        for method in methods:
            try:
                hits, strict, seconds = play(client, cases, method, args.batch)
            except Unanswered as refusal:
                print(f"{method:<22}  n/a: {refusal}", flush=True)
                continue
            _print_row(method, hits, strict, per_background, seconds)


def _print_row(name: str, hits: list[bool], strict: list[bool], per_background: int, seconds: float) -> None:
    parts = [hits[i * per_background:(i + 1) * per_background] for i in range(len(POINTING_GAME_BACKGROUNDS))]
    by_background = "".join(f"{f'{sum(p)}/{len(p)}' if p else '-':>8}" for p in parts)
    print(f"{name:<22}{f'{sum(hits)}/{len(hits)}':>8}{sum(hits) / max(len(hits), 1):>7.0%}"
          f"{sum(strict) / max(len(strict), 1):>8.0%}{by_background}{seconds:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
