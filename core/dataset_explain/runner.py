"""Explain every image of a data set with one method, batched, on a worker: each image's
prediction, its heatmap PNG (all in one zip), optionally its deletion and insertion scores, a
CSV of everything, and per data-set class the mean map.

Each image is explained for its own top-1 class, as /explain does by default; the mean maps are
grouped by the image's class in the data set (its folder), which need not be one of the model's.
"""

from __future__ import annotations

import csv
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from core import cancellation, imaging, pipeline
from core.datasets import dataset_images, uploaded_names
from core.dataset_explain.config import ExplainDatasetConfig
from core.errors import GazerError, InvalidRequest, ModelFailed, NonFiniteScores
from core.explain import METHODS
from core.jobs import JobCancelled, Progress, ShouldStop
from core.models.registry import LoadedModel
from core.params import check_params, choices, field_types, from_params
from core.png import encode_png

HEATMAPS = "heatmaps.zip"
TABLE = "explanations.csv"


# What makes a spreadsheet read a cell as a formula (OWASP's list): a class folder's name or a
# label, which the uploader chose, would run as one where whoever downloads the table opens it.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _SpreadsheetSafeWriter(csv.DictWriter):
    """A DictWriter that writes a text cell starting as a formula does with a `'` before it, which
    makes a spreadsheet read the cell as text (OWASP's advice for CSV injection)."""

    def writerow(self, rowdict: dict) -> Any:
        return super().writerow({key: f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_STARTS)
                                 else value for key, value in rowdict.items()})


def explain_dataset_config(params: dict[str, Any], model: LoadedModel | None = None) -> ExplainDatasetConfig:
    """The checked config; given the `model`, with its default method where none is named."""
    config = from_params(ExplainDatasetConfig, params)
    if config.method is None and model is not None:
        config = replace(config, method=pipeline.default_method(model))
    check_params(config)
    _check_option_types(config.method, config.options)
    return config


def _check_option_types(method: str, options: dict[str, Any]) -> None:
    """JSON values of the right kind for the method's options (their bounds and names are
    checked by the method itself)."""
    if method not in METHODS:
        return
    annotations = field_types(METHODS[method].Options)
    for name, value in options.items():
        expected = annotations.get(name)
        if expected is None or choices(expected) is not None:
            continue
        fits = not isinstance(value, bool) and (isinstance(value, int) if expected is int
                                                else isinstance(value, (int, float)) if expected is float else True)
        if not fits:
            raise InvalidRequest(f"option {name} must be a number ({expected.__name__}); got {value!r}",
                                 field=f"options.{name}")


def check_explain_dataset(config: ExplainDatasetConfig, model: LoadedModel, images: int,
                          max_image_cost: int | None = None, max_job_cost: int | None = None) -> int:
    """What explain would refuse (method, layer, options), and the budgets: forward-equivalents
    per image and for the whole data set. The job's cost."""
    try:
        per_image = pipeline.explain_cost(model, config.method, config.layer, config.options, 1, config.faithfulness)
    except InvalidRequest as refused:  # an option is named as the job's body holds it, as its type check names it
        if refused.extra.get("field") in config.options:
            refused.extra["field"] = f"options.{refused.extra['field']}"
        raise
    if max_image_cost is not None and per_image > max_image_cost:
        raise InvalidRequest(f"{config.method} costs {per_image} forward passes per image here"
                             f"{pipeline.forward_cost_note(model)}; the budget is "
                             f"{max_image_cost} (GAZER_MAX_EXPLAIN_COST): fewer steps, samples or masks",
                             field="options", cost=per_image, budget=max_image_cost)
    total = per_image * images
    if max_job_cost is not None and total > max_job_cost:
        raise InvalidRequest(f"explaining {images} images with {config.method} costs {total} forward passes; "
                             f"one job may cost {max_job_cost} (GAZER_MAX_EXPLAIN_JOB_COST)", field="dataset_id",
                             cost=total, budget=max_job_cost)
    return total


def batch_size(config: ExplainDatasetConfig, model: LoadedModel) -> int:
    """Images explained together: `batch_size`, or fewer where their raw maps (the mean maps are
    made of them) would be more than one explain returns (pipeline.most_raw_maps); at least one.
    Inception v3 at 299 px with saliency took 48 images a batch: 64 failed the job at its first."""
    return max(1, min(config.batch_size, pipeline.most_raw_maps(model, config.method, config.layer)))


@contextmanager
def stopping_within(should_stop: ShouldStop, every_seconds: float = 0.5) -> Iterator[None]:
    """A batch stops at its next model run once should_stop() says so (asked from a watching
    thread every `every_seconds`): JobCancelled."""
    stopped, finished = threading.Event(), threading.Event()

    def watch() -> None:
        while not finished.wait(every_seconds):
            if should_stop():
                stopped.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with cancellation.for_client(stopped):
            yield
    except cancellation.ClientGone:
        raise JobCancelled() from None
    finally:
        finished.set()
        watcher.join()


def _zip_names(items: list[tuple[Path, int]], classes: list[str]) -> list[str]:
    """`class/stem.png` for each image, `class/stem-N.png` where two stems meet in one class."""
    names, taken = [], set()
    for path, label in items:
        name, number = f"{classes[label]}/{path.stem}.png", 1
        while name in taken:
            name, number = f"{classes[label]}/{path.stem}-{number}.png", number + 1
        taken.add(name)
        names.append(name)
    return names


def explain_dataset(config: ExplainDatasetConfig, model: LoadedModel, datasets_dir: Path, folder: Path,
                    url: Callable[[str], str], max_image_pixels: int, progress: Progress,
                    should_stop: ShouldStop) -> dict[str, Any]:
    """Writes HEATMAPS, TABLE and `class-N-mean.png` into `folder`; the job's result, with `url`
    of each. Raises JobCancelled once should_stop() says so: between batches, or within one at
    its next model run."""
    check_explain_dataset(config, model, 1)
    classes, items = dataset_images(datasets_dir, config.dataset_id)
    uploaded_as = uploaded_names(datasets_dir, config.dataset_id)
    folder.mkdir(parents=True, exist_ok=True)
    names = _zip_names(items, classes)
    # Items come class by class: a class's mean map is written, and its sum let go, once the
    # batches have passed it, so that memory holds one class's sum, not one per class.
    sums: dict[int, np.ndarray] = {}
    rows: dict[int, list[dict]] = {index: [] for index in range(len(classes))}
    summary: list[dict[str, Any]] = []

    def summarize_classes_below(label: int) -> None:
        for index in range(len(summary), label):
            summary.append(_class_summary(index, classes[index], rows[index], sums.pop(index, None),
                                          model.spec.input_size, folder, url, config.faithfulness))
    columns = ["file", "uploaded_as", "class", "predicted_index", "predicted_label", "probability", "heatmap",
               "flat"] + \
        (["deletion", "insertion"] if config.faithfulness else []) + ["error"]
    layer, batch = None, batch_size(config, model)
    with zipfile.ZipFile(folder / HEATMAPS, "w", zipfile.ZIP_STORED) as heatmaps, \
            open(folder / TABLE, "w", newline="") as table_file:
        table = _SpreadsheetSafeWriter(table_file, columns)
        table.writeheader()

        def write_error(path: Path, label: int, error: str) -> None:
            file = f"{classes[label]}/{path.name}"
            table.writerow({"file": file, "uploaded_as": uploaded_as.get(file, file), "class": classes[label],
                            "error": error})
        for start in range(0, len(items), batch):
            if should_stop():
                raise JobCancelled()
            progress(start / len(items), phase="explaining", images=start, total=len(items))
            decoded = {}
            for index in range(start, min(start + batch, len(items))):
                path, label = items[index]
                try:
                    decoded[index] = imaging.decode_image(path.read_bytes(), max_image_pixels,
                                                          imaging.needed_sides(model.spec))
                except GazerError as error:
                    write_error(path, label, error.detail)
            if not decoded:
                continue
            with stopping_within(should_stop):
                results = _explained(model, config, decoded)
            for index, result in results.items():
                path, label = items[index]
                if isinstance(result, str):
                    write_error(path, label, result)
                    continue
                layer = result.explanation.layer
                heatmaps.writestr(names[index], result.explanation.heatmap_png)
                sums[label] = sums.get(label, 0) + np.asarray(result.explanation.map, dtype=np.float64)
                file = f"{classes[label]}/{path.name}"
                row = _row(file, uploaded_as.get(file, file), classes[label], names[index], result.explanation)
                table.writerow(row)
                rows[label].append(row)
            end = start + batch
            summarize_classes_below(items[end][1] if end < len(items) else len(classes))
    summarize_classes_below(len(classes))  # and those with no image
    progress(1.0, phase="explaining", images=len(items), total=len(items))
    explained = sum(len(kept) for kept in rows.values())
    return {"model": {"id": model.spec.id, "version": model.spec.version}, "dataset_id": config.dataset_id,
            "method": config.method, "layer": layer, "images": len(items), "explained": explained,
            "failed": len(items) - explained, "heatmaps": url(HEATMAPS), "table": url(TABLE), "classes": summary}


def _explained(model: LoadedModel, config: ExplainDatasetConfig,
               images: dict[int, Image.Image]) -> dict[int, pipeline.ImageResult | str]:
    """Each image's explanation, or where the model scores it NaN or infinite or fails on it, why
    it has none (the batch is then explained one image at a time, to tell which)."""
    def explain(batch: list[Image.Image]) -> list[pipeline.ImageResult]:
        return pipeline.explain(model, batch, config.method, None, config.layer, config.options, top_k=1,
                                outputs=("heatmap", "map"), faithfulness=config.faithfulness)
    try:
        return dict(zip(images, explain(list(images.values()))))
    except (NonFiniteScores, ModelFailed) as error:
        if len(images) == 1:
            return {next(iter(images)): error.extra["why"]}
        results: dict[int, pipeline.ImageResult | str] = {}
        for index, image in images.items():
            try:
                results[index] = explain([image])[0]
            except (NonFiniteScores, ModelFailed) as alone:
                results[index] = alone.extra["why"]
        return results


def _row(file: str, uploaded_as: str, label: str, heatmap: str,
         explanation: pipeline.RenderedExplanation) -> dict[str, Any]:
    row = {"file": file, "uploaded_as": uploaded_as, "class": label, "predicted_index": explanation.target.index,
           "predicted_label": explanation.target.label, "probability": round(explanation.target.probability, 6),
           "heatmap": heatmap, "flat": explanation.flat}
    if explanation.faithfulness is not None:
        row.update(deletion=round(explanation.faithfulness.deletion, 6),
                   insertion=round(explanation.faithfulness.insertion, 6))
    return row


def _class_summary(index: int, label: str, rows: list[dict], total: np.ndarray | None, size: int, folder: Path,
                   url: Callable[[str], str], faithfulness: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"index": index, "label": label, "images": len(rows)}
    if not rows:
        return summary
    mean_map = total / len(rows)
    name = f"class-{index}-mean.png"
    box = imaging.CropBox(0.0, 0.0, float(size), float(size))
    (folder / name).write_bytes(encode_png(imaging.JET[imaging.place_heatmap(mean_map, box, size, size)]))
    summary["mean_map"] = url(name)
    summary["mean_probability"] = round(float(np.mean([row["probability"] for row in rows])), 4)
    scored = [row for row in rows if "deletion" in row]  # flat maps have no scores
    if faithfulness:
        summary["scored"] = len(scored)
    if scored:
        summary["deletion"] = round(float(np.mean([row["deletion"] for row in scored])), 4)
        summary["insertion"] = round(float(np.mean([row["insertion"] for row in scored])), 4)
    return summary
