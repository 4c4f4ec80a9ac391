"""The command line: every command, its flags and help."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import typing
from pathlib import Path
from typing import Any, Callable

from gazer.calls import DEFAULT_MODEL
from gazer.cli.arguments import ThreeNumbers, add_fine_tune_flags
from gazer.cli.datasets import cmd_datasets_delete, cmd_datasets_ls, cmd_datasets_show, cmd_datasets_upload
from gazer.cli.explaining import OVERLAY_ENDINGS, cmd_compare, cmd_explain, cmd_predict
from gazer.cli.jobs import JOB_TYPE_OF_COMMAND, cmd_explain_dataset, cmd_finetune, cmd_jobs_artifacts, \
    cmd_jobs_cancel, cmd_jobs_follow, cmd_jobs_ls, cmd_jobs_show, cmd_maximize, cmd_sweep
from gazer.cli.keys import cmd_keys_create, cmd_keys_list, cmd_keys_revoke
from gazer.cli.models import cmd_models_delete, cmd_models_labels, cmd_models_ls, cmd_models_pin, \
    cmd_models_show, cmd_models_unpin, cmd_models_upload, cmd_models_versions
from gazer.client import DEFAULT_URL, Client, default_url
from schemas.api_keys import SCOPES
from schemas.jobs import Job


def installed_version() -> str:
    """The version of the installed `gazer` distribution (pyproject.toml's), or where it is not installed, so."""
    try:
        return importlib.metadata.version("gazer")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gazer", description="Predict and explain image classifiers with a "
                                                               "Gazer service; fine-tune them on your images.")
    parser.add_argument("--url", default=default_url(), help=f"the service (default $GAZER_URL, else {DEFAULT_URL})")
    parser.add_argument("--api-key", default=None, help="the key to send (default $GAZER_API_KEY)")
    parser.add_argument("--version", action="version", version=f"gazer {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, run: Callable[[Client, argparse.Namespace], int], text: str) \
            -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=text, description=text)
        sub.set_defaults(run=run)
        return sub

    def group(name: str, text: str) -> Any:
        return commands.add_parser(name, help=text, description=text) \
            .add_subparsers(dest="action", required=True, metavar="ACTION")

    def model_flag(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", "-m", default=DEFAULT_MODEL, help="NAME or NAME@VERSION (default %(default)s)")

    def no_follow_flag(sub: argparse.ArgumentParser) -> None:  # the job commands follow their job unless told
        sub.add_argument("--no-follow", action="store_true", help="submit, print the job id alone and return")

    sub = command(commands, "predict", cmd_predict, "top classes of each image, as a table")
    sub.add_argument("images", nargs="+", metavar="IMG")
    model_flag(sub)
    sub.add_argument("--top-k", "-k", type=int, default=None, help="classes per image (server default 5)")
    sub.add_argument("--resize", choices=("crop", "stretch"), default=None)
    sub.add_argument("--json", action="store_true", help="the API's answer as JSON, not a table")

    sub = command(commands, "explain", cmd_explain, "write each image's explanation overlay (PNG, JPEG or WebP)")
    sub.add_argument("images", nargs="+", metavar="IMG")
    model_flag(sub)
    sub.add_argument("--method", default=None, help="cam, saliency, ... (see /docs); default the model's own: "
                                                     "gradcam, or occlusion for a model served from ONNX alone")
    sub.add_argument("--target", default=None, metavar="N|LABEL",
                     help="the class, by index or label (tabby; default the top-1)")
    sub.add_argument("--layer", default=None,
                     help="layer to explain, for a method that takes one (default the model's CAM layer)")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method option, e.g. steps=32 or baseline=blur; repeatable")
    sub.add_argument("--output", "-o", required=True,
                     help="the overlay to write: PNG, or JPEG or WebP by its name's ending (.jpg, .webp); - for "
                          "standard output; with several images a folder, each overlay named after its image")
    sub.add_argument("--format", choices=tuple(OVERLAY_ENDINGS), default=None,
                     help="the overlay's format (default: by -o's ending; png for a folder)")
    sub.add_argument("--resize", choices=("crop", "stretch"), default=None,
                     help="crop (default): the model's own preprocessing; stretch: the whole image")
    sub.add_argument("--heatmap", default=None, metavar="PATH",
                     help="also write the grey heatmap PNG here (with several images a folder)")
    sub.add_argument("--faithfulness", action="store_true",
                     help="also score the map by deletion and insertion (about 34 more forward passes an image)")

    sub = command(commands, "compare", cmd_compare, "one grid image of several methods' overlays")
    sub.add_argument("image", metavar="IMG")
    model_flag(sub)
    sub.add_argument("--methods", required=True, help="comma-separated, e.g. gradcam,layercam,saliency")
    sub.add_argument("--target", default=None, metavar="N|LABEL",
                     help="the class, by index or label (tabby; default the top-1)")
    sub.add_argument("--layer", default=None,
                     help="layer to explain, for a method that takes one (default the model's CAM layer)")
    sub.add_argument("--output", "-o", required=True,
                     help="the grid to write: PNG, or JPEG or WebP by its name's ending (.jpg, .webp); - for "
                          "standard output; a folder (one that exists, or a name ending in /): the grid named "
                          "after the image")
    sub.add_argument("--format", choices=tuple(OVERLAY_ENDINGS), default=None,
                     help="the grid's format (default: by -o's ending; png for standard output)")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method's own option (steps=32, baseline=blur, ...), sent to the methods that take it; "
                          "repeatable")

    datasets = group("datasets", "upload and list data sets")
    sub = command(datasets, "upload", cmd_datasets_upload,
                  "upload a folder (one folder of images per class; zipped here) or a .zip / .tar.gz")
    sub.add_argument("source", metavar="DIR_OR_ARCHIVE")
    sub.add_argument("--name", default=None, help="a name to show (default the id)")
    sub.add_argument("--quiet", "-q", action="store_true", help="print the data set's id only")
    command(datasets, "ls", cmd_datasets_ls, "list data sets")
    command(datasets, "show", cmd_datasets_show, "a data set's description as JSON") \
        .add_argument("dataset_id", metavar="ID")
    command(datasets, "delete", cmd_datasets_delete, "delete a data set").add_argument("dataset_id", metavar="ID")

    sub = command(commands, "finetune", cmd_finetune,
                  "fine-tune a model on a data set and follow the job's progress until it ends")
    sub.set_defaults(fine_tune_flags=add_fine_tune_flags(sub))
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any other field, e.g. head.hidden=128 or augmentation.flip=false; repeatable")
    no_follow_flag(sub)

    sub = command(commands, "sweep", cmd_sweep, "search fine-tune settings: trials of the fine-tune these flags "
                                              "describe, over --space; the best trial's model is published")
    sub.set_defaults(fine_tune_flags=add_fine_tune_flags(sub))
    sub.add_argument("--space", required=True, metavar="JSON",
                     help='the fields to search, e.g. \'{"lr": {"log_uniform": [1e-4, 1e-1]}, '
                          '"head.dropout": {"choice": [0, 0.3]}}\'')
    sub.add_argument("--trials", type=int, default=None, help="how many (server default)")
    sub.add_argument("--parallel", type=int, default=None, help="trials at once (server default)")
    sub.add_argument("--metric", default=None, help="what the best trial is best at: val_accuracy (highest) or "
                                                    "val_loss (lowest); default val_accuracy")
    sub.add_argument("--sweep-seed", type=int, default=None, help="the sampler's seed (--seed is each trial's)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="any other field of the base fine-tune; repeatable")
    no_follow_flag(sub)

    sub = command(commands, "explain-dataset", cmd_explain_dataset,
                  "explain every image of a data set on a worker (fetch the results with: gazer jobs artifacts ID)")
    sub.add_argument("dataset_id", metavar="DATASET")
    model_flag(sub)
    sub.add_argument("--method", default=None, help="cam, saliency, ... (see /docs); default the model's own: "
                                                     "gradcam, or occlusion for a model served from ONNX alone")
    sub.add_argument("--layer", default=None,
                     help="layer to explain, for a method that takes one (default the model's CAM layer)")
    sub.add_argument("--faithfulness", action="store_true", help="also score each map by deletion and insertion")
    sub.add_argument("--batch-size", type=int, default=None, metavar="N",
                     help="images explained together (1-64; server default 8)")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="a method option, e.g. steps=32; repeatable")
    no_follow_flag(sub)

    sub = command(commands, "maximize", cmd_maximize,
                  "activation maximization: what a class (or channel) looks like to the network "
                  "(fetch the images with: gazer jobs artifacts ID)")
    model_flag(sub)
    sub.add_argument("--class", dest="classes", action="append", default=[], metavar="N|LABEL",
                     help="a class, by index or label (flamingo); repeatable")
    sub.add_argument("--layer", default=None, help="instead of classes: a layer, with --channel")
    sub.add_argument("--channel", dest="channels", type=int, action="append", default=[], metavar="N",
                     help="a channel of --layer; repeatable")
    sub.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="e.g. steps=200, size=128, lr=0.05; repeatable")
    no_follow_flag(sub)

    jobs = group("jobs", "list, show, follow and cancel jobs")
    sub = command(jobs, "ls", cmd_jobs_ls, "list jobs")
    sub.add_argument("--state", default=None, choices=typing.get_args(Job.model_fields["state"].annotation))
    sub.add_argument("--type", default=None, type=lambda given: JOB_TYPE_OF_COMMAND.get(given, given),
                     help="fine-tune, sweep, explain-dataset or activation-maximization (or the commands' names: "
                          "finetune, maximize)")
    sub.add_argument("--parent", default=None, metavar="ID", help="the trials of sweep ID")
    sub.add_argument("--limit", type=int, default=None, metavar="N", help="at most N jobs (server default 100)")
    sub.add_argument("--before", default=None, metavar="ID", help="only jobs older than job ID (the last listed)")
    sub = command(jobs, "artifacts", cmd_jobs_artifacts, "write the files a finished job made into a folder")
    sub.add_argument("job_id", metavar="ID")
    sub.add_argument("--output", "-o", default=None, help="the folder (default ./ID, made if need be)")
    sub.add_argument("--force", action="store_true", help="replace files already in the folder (by default "
                                                          "an existing file is an error)")
    for name, run, text in (("show", cmd_jobs_show, "a job's record as JSON"),
                            ("cancel", cmd_jobs_cancel, "cancel a job (a running one stops at its next step)"),
                            ("follow", cmd_jobs_follow, "a job's progress bar until it ends")):
        command(jobs, name, run, text).add_argument("job_id", metavar="ID")

    models = group("models", "list, describe, upload, pin and delete models")
    command(models, "ls", cmd_models_ls, "list models")
    sub = command(models, "show", cmd_models_show, "describe a model")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--json", action="store_true", help="the API's whole description as JSON: its layers, "
                                                         "labels, methods, ...")
    sub = command(models, "labels", cmd_models_labels, "a model's classes by index (what --target counts)")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("text", nargs="?", default="", metavar="TEXT", help="only the labels holding TEXT (any case)")
    command(models, "versions", cmd_models_versions, "a model's versions").add_argument("name", metavar="NAME")
    sub = command(models, "pin", cmd_models_pin, "make a plain NAME mean VERSION (a rollback)")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("version", type=int, metavar="VERSION")
    command(models, "unpin", cmd_models_unpin, "make a plain NAME mean its newest version again") \
        .add_argument("name", metavar="NAME")
    sub = command(models, "delete", cmd_models_delete, "delete one version of a model (NAME@VERSION), or every "
                                                        "version (NAME: asks first)")
    sub.add_argument("ref", metavar="NAME[@VERSION]")
    sub.add_argument("--yes", action="store_true", help="delete every version of NAME without asking")
    sub = command(models, "upload", cmd_models_upload,
                  "upload a model: --architecture with --weights (.safetensors), or --onnx")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--architecture", default=None, help="a torchvision builder (resnet50, ...) or timm:NAME")
    sub.add_argument("--weights", type=Path, default=None, help=".safetensors state dict")
    sub.add_argument("--onnx", type=Path, default=None, help="a self-contained ONNX classifier")
    sub.add_argument("--labels", type=Path, default=None,
                     help="text file, one class name per line (default: the newest earlier version's, where it has "
                          "as many classes, else 0, 1, ...)")
    for flag in ("--mean", "--std"):
        sub.add_argument(flag, nargs="+", action=ThreeNumbers, default=None, metavar="N",
                         help="three numbers, as 0.5 0.5 0.5 or 0.5,0.5,0.5")
    sub.add_argument("--input-size", type=int, default=None)
    sub.add_argument("--resize-size", type=int, default=None)
    sub.add_argument("--interpolation", choices=("bilinear", "bicubic"), default=None)
    sub.add_argument("--cam-layer", default=None)

    keys = group("keys", "API keys, in the service's key file (run where the service runs)")

    def key_command(name: str, run: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        sub = command(keys, name, run, text)
        sub.set_defaults(local=True)
        sub.add_argument("--file", type=Path, default=os.environ.get("GAZER_API_KEYS"),
                         help="the key file (default $GAZER_API_KEYS)")
        return sub

    sub = key_command("create", cmd_keys_create, "make a key, print it once and store only its hash")
    sub.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    sub.add_argument("--label", default="", help="who or what the key is for")
    key_command("list", cmd_keys_list, "the keys in the file: id, scopes, label, when made (never the key)")
    sub = key_command("revoke", cmd_keys_revoke, "remove a key: the service refuses it from its next request")
    sub.add_argument("id", metavar="ID", help="the key's id, as `gazer keys list` shows it (gz_<ID>_...)")
    return parser
