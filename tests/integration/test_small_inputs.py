"""A model fine-tuned under 64 px, where its CAM layer's map is 1 x 1 (no targetable layer, yet
the default one), is explained with raw maps and over a whole data set. Run in this process, on
the real runners, registry and data sets."""

from __future__ import annotations

import pytest

from core import pipeline
from core.datasets import ArchiveLimits, ingest_archive
from core.job_runners import JobContext, run_explain_dataset, run_fine_tune
from core.models.registry import ModelRegistry
from core.storage import Storage
from schemas.jobs import artifact_url
from support import chelsea, shapes_archive

LIMITS = ArchiveLimits(max_files=1000, max_total_bytes=10**8, max_image_pixels=10**6)


def quiet(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    storage = Storage(tmp_path_factory.mktemp("small"))
    return JobContext(storage, ModelRegistry(storage, max_loaded=2), 10**6, artifact_url)


def test_the_default_layer_of_a_model_fine_tuned_at_32_px_gives_raw_maps_and_data_set_explanations(context):
    """Its default layer was checked again as if named: every outputs=map was a 422 and every data
    set explanation failed on the worker (`unknown-layer`, "no targetable layer 'head'")."""
    dataset = ingest_archive(shapes_archive(per_class=3), context.storage.datasets, None, LIMITS)
    run_fine_tune("small-fine-tune", {"dataset_id": dataset["id"], "output_model": "small", "epochs": 1,
                                      "strategy": "feature_extraction", "input_size": 32, "batch_size": 8},
                  quiet, lambda: False, context)
    model = context.registry.get("small")
    assert model.spec.cam_layer not in model.layers  # the case: its map is 1 x 1
    for method in ("gradcam", "scorecam"):
        (result,) = pipeline.explain(model, [chelsea()], method, outputs=("heatmap", "map"))
        assert result.explanation.layer == model.spec.cam_layer and result.explanation.map is not None
    explained = run_explain_dataset("small-explain", {"dataset_id": dataset["id"], "model": model.spec.ref,
                                                      "method": "gradcam"}, quiet, lambda: False, context)
    assert explained["layer"] == model.spec.cam_layer and explained["explained"] == 9 and explained["failed"] == 0


def test_a_data_set_explanations_table_writes_no_cell_a_spreadsheet_runs_as_a_formula(context):
    """The archive's one top folder is not a class, so it is not a checked name: `=1+1+cmd|...`
    reached the table's uploaded_as cells as a formula, run where whoever downloads it opens it."""
    import csv
    import io
    import zipfile

    root = "=1+1+cmd|' -C calc'!A0"
    with zipfile.ZipFile(io.BytesIO(shapes_archive(per_class=2))) as source:
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w") as archive:
            for name in source.namelist():
                archive.writestr(f"{root}/{name}", source.read(name))
    dataset = ingest_archive(packed.getvalue(), context.storage.datasets, None, LIMITS)
    explained = run_explain_dataset("formula-table", {"dataset_id": dataset["id"], "model": "efficientnet_lite0",
                                                      "method": "cam"}, quiet, lambda: False, context)
    table = context.storage.job_artifacts("formula-table") / "explanations.csv"
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert len(rows) == explained["explained"] == 6
    assert all(row["uploaded_as"].startswith(f"'{root}/") for row in rows), rows[0]
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
