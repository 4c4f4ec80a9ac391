"""Service settings, read from GAZER_* environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator

from core.names import DEFAULT_MODEL, OUTPUTS
from infra.settings import SharedSettings


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


class Settings(SharedSettings):
    default_model: str = DEFAULT_MODEL
    max_request_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_request_pixels: int = Field(160_000_000, ge=1)  # all images of one request: about 480 MB decoded
    max_files: int = Field(64, ge=1)
    # Requests in flight per model (decoding, queued or running); beyond it 503 with
    # Retry-After at once, so that admitted requests are answered in bounded time.
    max_queued_per_model: int = Field(24, ge=1)
    # Explanations in flight at once over all models; beyond it 503 at once.
    max_concurrent_explanations: int = Field(32, ge=1)
    # One client's share (its key, or its address when open) of a model's queue and of the
    # explanation slots; beyond it 429 with Retry-After, so that one client cannot fill them.
    max_queued_per_client: int = Field(12, ge=1)
    max_explanations_per_client: int = Field(16, ge=1)
    # Data set uploads one client may have extracted (or waiting for a slot) at once in a process.
    max_dataset_ingests_per_client: int = Field(1, ge=1)
    # Decoded pixels those explanations hold together (their images, as the headers declare them);
    # beyond it 503 at once. Four requests at GAZER_MAX_REQUEST_PIXELS: about 2.6 GB as Pillow holds RGB.
    # One client's share of them (default half); beyond it 429.
    max_explained_pixels: int = Field(640_000_000, ge=1)
    max_explained_pixels_per_client: int | None = Field(None, ge=1)
    # Concurrent requests' images run together, up to this many per model run; an idle model
    # runs what it has at once, unless batch_wait_ms asks it to wait for more.
    max_batch: int = Field(32, ge=1, le=1024)
    batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    # Predict decodes and preprocesses JPEGs on the model's device (nvJPEG on a GPU) instead of
    # the CPU cores (core.device_preprocessing). Off by default: not measured on a GPU yet; on a
    # CPU it only costs more.
    decode_on_device: bool = False
    # An uploaded ONNX model's check runs in a child process, batches of 1, 2, 4, ... max_batch
    # images: the address space it may take beyond that process's own, and the seconds before it
    # is killed (VGG-16 at 224 takes 49 s here, 13 of them counting its FLOPs, on the one thread
    # the check runs on).
    onnx_check_memory_bytes: int = Field(4 * 1024**3, ge=64 * 2**20)
    onnx_check_seconds: float = Field(120.0, gt=0, le=3600)
    # An uploaded torch model's check, in a process of its own too (its build, first runs, ONNX
    # export and agreement with ONNX Runtime): the same two caps. ConvNeXt-Large (754 MiB of
    # weights) at 224 needs over 4 GiB: its weights are held as the upload, as tensors, in the
    # network, in the export and in ONNX Runtime.
    weights_check_memory_bytes: int = Field(8 * 1024**3, ge=64 * 2**20)
    weights_check_seconds: float = Field(120.0, gt=0, le=3600)
    # How long a model upload waits for the one upload slot before 503.
    explain_queue_seconds: float = Field(60.0, gt=0)
    # What explain returns when a request names no `outputs` (JSON, e.g. ["heatmap"]).
    explain_outputs: tuple[str, ...] = ("heatmap", "overlay")
    # The key file (`gazer keys create` writes it). Without one the service is open, and
    # `python -m service` refuses to listen beyond loopback unless allow_open is set.
    api_keys: Path | None = None
    allow_open: bool = False
    # Comma-separated. Origins whose pages may call the API from a browser (none by default),
    # and the Host names answered (default: loopback names when open, any with keys).
    cors_origins: str = ""
    allowed_hosts: str = ""
    # proxies whose X-Forwarded-For names the client (comma-separated addresses or networks); none
    # by default: uvicorn's own default trusts 127.0.0.1, so any local client could pick its address
    trusted_proxies: str = ""
    # Connections and requests in flight per API process; beyond it uvicorn answers 503.
    max_connections: int = Field(1000, ge=1)
    # of one process; behind a proxy every connection comes from the proxy: raise it there
    max_connections_per_address: int = Field(256, ge=1)
    # uvicorn processes serving one port; each loads its own models and keeps its own limits.
    api_processes: int = Field(1, ge=1, le=64)
    # How long `make run` gives its processes to stop, together, before it kills them: the worker
    # puts its running job back in the queue at the job's next step, the API answers what is in flight.
    stop_seconds: float = Field(30.0, gt=0)
    # A request body that sends nothing for this long before it is complete gets 408, and so
    # does one that averages under body_min_bytes_per_second after that long; a connection
    # whose request headers are not complete this long after they began is closed.
    body_idle_seconds: float = Field(30.0, gt=0)
    body_min_bytes_per_second: float = Field(16384.0, gt=0)
    header_seconds: float = Field(10.0, gt=0)
    # One explain request may cost this many forward-equivalents (files x steps, samples, masks
    # or channels; a backward counts as one); more is a 422 that gives the cost.
    max_explain_cost: int = Field(8192, ge=1)
    # How long one explain request's explanation may run (from when a thread takes it up) before it
    # is stopped at its next model run, a 422: the cost counts forwards, not what a model's forward
    # costs (ResNet-18 at 1024 px took 1.35 CPU-s a unit, Lite0 at 224 17 ms).
    explain_seconds: float = Field(300.0, gt=0, le=86400)
    # One explain-dataset job may cost this many (its images x the cost of one; each image is held
    # to max_explain_cost as well).
    max_explain_job_cost: int = Field(2_000_000, ge=1)
    # One fine-tune, sweep (all its trials) or activation maximization may cost this many
    # forward-equivalents, estimated before it is queued (core.job_costs: a training step's image
    # counts a forward and a backward at the job's size); more is a 422 that gives the cost.
    max_job_cost: int = Field(500_000, ge=1)
    # Token buckets per client (key, or address when open): requests, and explain compute.
    requests_per_second: float = Field(100.0, gt=0)
    request_burst: int = Field(500, ge=1)
    compute_per_second: float = Field(1000.0, gt=0)
    compute_burst: int = Field(16384, ge=1)
    # Server-sent event streams open at once, in all and per client, and how long one lasts.
    max_event_streams: int = Field(1000, ge=1)
    max_event_streams_per_client: int = Field(100, ge=1)
    event_stream_seconds: float = Field(3600.0, gt=0)
    # Job records one client keeps (any state); beyond it, once another of its jobs is queued,
    # its oldest ended jobs go, with their artifacts, as retention would take them later.
    max_jobs_kept_per_client: int = Field(1000, ge=1)
    # Finished jobs (records and artifacts) are removed this long after they end.
    job_retention_days: float = Field(30.0, gt=0)
    # What one API key may keep (keys with `admin` are not counted for model names).
    max_datasets_per_key: int = Field(50, ge=1)
    max_models_per_key: int = Field(20, ge=1)
    # Versions one model name may have, counting the key's jobs that will publish there; the key
    # that holds the name may delete its versions to make room.
    max_versions_per_model: int = Field(20, ge=1)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def allowed_host_list(self) -> list[str]:
        listed = [host.strip() for host in self.allowed_hosts.split(",") if host.strip()]
        if listed:
            return listed
        return ["*"] if self.api_keys else list(LOOPBACK_NAMES)

    @property
    def explain_budget(self) -> int:
        """The most one explain request may cost: GAZER_MAX_EXPLAIN_COST, and no more than a
        client's compute bucket holds, or its 429 could never pass."""
        return min(self.max_explain_cost, self.compute_burst)

    @property
    def explained_pixels_per_client(self) -> int:
        return min(self.max_explained_pixels_per_client or max(1, self.max_explained_pixels // 2), self.max_explained_pixels)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, proxies: str) -> str:
        """uvicorn trusts what it cannot read as an address as a name that no peer has, so that
        X-Forwarded-For was ignored without a word; and with `*` it takes the header's first entry,
        which the client writes, whatever the proxies append after it."""
        for entry in (part.strip() for part in proxies.split(",") if part.strip()):
            if entry == "*":
                raise ValueError("* would take the address each client writes into X-Forwarded-For: name the "
                                 "proxies' addresses or networks (10.0.0.0/8, say)")
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network (names are not resolved)") from None
        return proxies

    @field_validator("explain_outputs")
    @classmethod
    def _known_outputs(cls, outputs: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(outputs) - set(OUTPUTS)
        if not outputs or unknown:
            raise ValueError(f"explain_outputs must be some of {OUTPUTS}, got {outputs}")
        return outputs
