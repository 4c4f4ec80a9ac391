"""A closed-loop load generator: each client keeps one request in flight, cycling through the 20
foolbox ImageNet JPEGs (512 x 512), for a fixed time; it reports throughput, latency
percentiles, the status codes seen and the server's CPU use.

  python -m bench.load                  # Gazer predict / cam / gradcam / IG-32 at 1, 8, 32, 128 clients
  python -m bench.load --peers          # also PyTriton (bench/peers), installed into a venv of its own

Clients are threads on keep-alive connections with their bodies built once, so the generator
costs the machine as little as it can; it shares the 2 cores with the server all the same.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psutil

from support import foolbox_imagenet_photos, multipart

# photo -> (path, body, headers) of one request
BodyFor = Callable[[bytes], tuple[str, bytes, dict[str, str]]]


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 200s, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    retry_after_missing: int = 0  # 503s without Retry-After
    server_cpu: float = 0.0  # cores the server processes used on average
    generator_cpu: float = 0.0  # cores this load generator used on average, beside the server

    @property
    def ok_per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(self.statuses.items()))
        warn = f"  ({self.retry_after_missing} 503s without Retry-After)" if self.retry_after_missing else ""
        return (f"{self.ok_per_second:7.1f} req/s  p50 {self.percentile(0.5):7.1f} ms  p99 {self.percentile(0.99):7.1f} ms"
                f"  max {self.percentile(1.0):7.1f} ms"
                f"  server {self.server_cpu:4.2f} cores (generator {self.generator_cpu:4.2f})  [{codes}]{warn}")


def gazer_body(path: str, fields: dict[str, object] | None = None) -> BodyFor:
    def body_for(photo: bytes) -> tuple[str, bytes, dict[str, str]]:
        body, content_type = multipart([("photo.jpg", photo)], fields)
        return path, body, {"Content-Type": content_type}
    return body_for


def photos() -> list[bytes]:
    return [path.read_bytes() for path, _ in foolbox_imagenet_photos()]


def _server_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                times = member.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def closed_loop(port: int, body_for: BodyFor, clients: int, seconds: float, server_pids: list[int],
                warmup: float = 2.0) -> LoadResult:
    """`clients` threads, each with one request in flight, for `warmup` + `seconds`; only the
    requests that start after the warm-up count."""
    requests = [body_for(photo) for photo in photos()]
    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    begin = time.perf_counter() + warmup
    end = begin + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        index = offset
        while (started := time.perf_counter()) < end:
            path, body, headers = requests[index % len(requests)]
            index += 1
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status, retry_after = response.status, response.getheader("Retry-After")
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status, retry_after = 0, None
            finished = time.perf_counter()
            if started < begin:
                continue
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    result.latencies.append(finished - started)
                elif status == 503 and retry_after is None:
                    result.retry_after_missing += 1
            if status in (429, 503):  # as a client that honours Retry-After
                time.sleep(min(float(retry_after or 1), 5.0))
        connection.close()

    threads = [threading.Thread(target=client, args=(offset,)) for offset in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, begin - time.perf_counter()))
    cpu_before, own_before = _server_cpu_seconds(server_pids), time.process_time()
    time.sleep(max(0.0, end - time.perf_counter()))
    result.server_cpu = (_server_cpu_seconds(server_pids) - cpu_before) / seconds
    result.generator_cpu = (time.process_time() - own_before) / seconds
    for thread in threads:
        thread.join()
    return result


def alternating(port: int, workloads: dict[str, BodyFor], seconds: float, server_pids: list[int],
                warmup: float = 2.0) -> dict[str, LoadResult]:
    """One client sending each workload's request for a photo in turn, then the next photo's, for
    `warmup` + `seconds`: a ratio of their latencies is then measured side by side, whatever the
    machine's speed does meanwhile. Server CPU is that of all the workloads together."""
    requests = {name: [body_for(photo) for photo in photos()] for name, body_for in workloads.items()}
    results = {name: LoadResult(1, seconds) for name in workloads}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def send(name: str, index: int) -> tuple[int, float]:
        path, body, headers = requests[name][index % len(requests[name])]
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started

    index = 0
    warm_until = time.perf_counter() + warmup
    while time.perf_counter() < warm_until:
        for name in requests:
            send(name, index)
        index += 1
    cpu_before, begin = _server_cpu_seconds(server_pids), time.perf_counter()
    while time.perf_counter() < begin + seconds:
        for name, outcome in results.items():
            status, latency = send(name, index)
            outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
            if status == 200:
                outcome.latencies.append(latency)
        index += 1
    connection.close()
    cores = (_server_cpu_seconds(server_pids) - cpu_before) / (time.perf_counter() - begin)
    for outcome in results.values():
        outcome.server_cpu = cores
    return results


def mean_run_size(port: int) -> tuple[float, float]:
    """(images, runs) the server's ONNX Runtime runs have taken so far, from its /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    values = {}
    for line in text.splitlines():
        for name in ("gazer_model_run_images_sum", "gazer_model_run_images_count"):
            if line.startswith(name + '{runtime="onnx"}'):
                values[name] = float(line.split()[-1])
    return values.get("gazer_model_run_images_sum", 0.0), values.get("gazer_model_run_images_count", 0.0)


def compute_bound(batch: int) -> tuple[float, float, float, float]:
    """(decode + preprocess core-ms per image, ORT core-ms per image at `batch` on the served
    session (a thread per core) and on a session of one thread (the cheaper per image, which
    the second run beside another takes), images/s the machine's cores could do at most: at the
    cheaper ORT), measured in this process on its CPU time."""
    from bench.common import served_model
    from core import imaging
    from core.parallel import cpu_count
    from core.runtime.onnx_predictor import _session

    model = served_model("efficientnet_lite0")
    blobs = photos()
    started = time.process_time()
    for blob in blobs * 3:
        imaging.preprocess([imaging.decode_image(blob, 10**8)], model.spec)
    decode_ms = (time.process_time() - started) * 1000 / (3 * len(blobs))
    inputs, _ = imaging.preprocess([imaging.decode_image(blob, 10**8) for blob in blobs[:batch]] * (batch // len(blobs) + 1),
                                   model.spec)
    inputs = inputs[:batch]
    single = _session(model.predictor.path, threads=1)
    costs = []
    for session in (model.predictor.session, single):
        for _ in range(3):
            session.run(["logits"], {model.predictor.input_name: inputs})
        runs = max(3, 64 // batch)
        started = time.process_time()
        for _ in range(runs):
            session.run(["logits"], {model.predictor.input_name: inputs})
        costs.append((time.process_time() - started) * 1000 / (runs * batch))
    return decode_ms, costs[0], costs[1], cpu_count() * 1000 / (decode_ms + min(costs))


def main() -> None:
    from bench.common import running_server_process

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,8,32,128")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--peers", action="store_true", help="also PyTriton, in a venv of its own")
    parser.add_argument("--only", default="predict,cam,cam-heatmap,gradcam,gradcam-blocks15,ig32",
                        help="which Gazer workloads")
    parser.add_argument("--before", metavar="REV", help="also a server of git revision REV, each load run on it "
                                                        "right after the same run on this working tree")
    args = parser.parse_args()
    counts = [int(count) for count in args.clients.split(",")]
    model = "efficientnet_lite0"
    workloads = {
        "predict": gazer_body(f"/v1/models/{model}/predict"),
        "cam": gazer_body(f"/v1/models/{model}/explain", {"method": "cam"}),
        "cam-heatmap": gazer_body(f"/v1/models/{model}/explain", {"method": "cam", "outputs": "heatmap"}),
        "gradcam": gazer_body(f"/v1/models/{model}/explain", {"method": "gradcam"}),  # from ONNX Runtime: no torch
        "layercam": gazer_body(f"/v1/models/{model}/explain", {"method": "layercam"}),  # as gradcam
        # below the classifier's layer Grad-CAM runs a forward and a backward on torch
        "gradcam-blocks15": gazer_body(f"/v1/models/{model}/explain", {"method": "gradcam", "layer": "blocks.15"}),
        "ig32": gazer_body(f"/v1/models/{model}/explain", {"method": "integrated_gradients", "steps": 32,
                                                           "outputs": "heatmap"}),
    }
    results: dict[str, dict[int, LoadResult]] = {}
    bound = None  # images/s, once measured
    # every client of this generator comes from one address: lift the per-client limits
    unlimited = {"requests_per_second": 1e6, "request_burst": 1000000, "max_queued_per_client": 1000000,
                 "max_explanations_per_client": 1000000}
    # All servers run at once and each load runs on them back to back, since this machine's speed
    # drifts over minutes: a ratio is only honest between runs made side by side.
    with running_server_process(**unlimited) as (port, pids), _before_server(args.before, unlimited) as before, \
            _peer_servers(args.peers and "predict" in args.only.split(",")) as peers:
        for name in args.only.split(","):
            results[name] = {}
            for clients in counts if name in ("predict", "cam") else [1] if name == "cam-heatmap" else [1, 8]:
                images, runs = mean_run_size(port)
                seconds = args.seconds * (4 if name == "ig32" else 1)  # 8 batched IG-32s take over 10 s
                results[name][clients] = outcome = closed_loop(port, workloads[name], clients, seconds, pids)
                images_after, runs_after = mean_run_size(port)
                batch = (images_after - images) / max(runs_after - runs, 1)
                print(f"gazer {name:8s} {clients:4d} clients  {outcome.row()}  onnx run {batch:4.1f} images", flush=True)
                if before is not None:
                    outcome = closed_loop(before[0], workloads[name], clients, seconds, before[1])
                    print(f"  {args.before[:12]:>12s}  {clients:4d} clients  {outcome.row()}", flush=True)
                if name in ("cam", "cam-heatmap") and clients == 1:  # for the ratio, alternating with predict
                    paired = alternating(port, {name: workloads[name], "predict": workloads["predict"]}, seconds, pids)
                    results[f"{name} alternating"] = {1: paired[name]}
                    results[f"{name} alternating predict"] = {1: paired["predict"]}
                    for label, outcome in paired.items():
                        print(f"  {'alternating, ' + label:>24s}  {outcome.row()}", flush=True)
                if name == "predict":
                    from bench.peers import pytriton

                    for label, (peer_port, peer_pids) in peers.items():
                        results.setdefault(label, {})[clients] = outcome = closed_loop(
                            peer_port, pytriton.body_for, clients, args.seconds, peer_pids)
                        print(f"  {label:>20s}  {clients:4d} clients  {outcome.row()}", flush=True)
                    if clients == 8:
                        bound = _print_compute_bound(max(1, round(batch)), results["predict"][8],
                                                     http_core_ms(port, pids))
    _goals(results, bound)


def http_core_ms(port: int, server_pids: list[int], seconds: float = 5.0) -> float:
    """Server core-ms per request of what HTTP alone costs a predict: a photo-sized upload that is
    not an image, refused (422) before anything is decoded, at 4 clients."""
    def refused(photo: bytes) -> tuple[str, bytes, dict[str, str]]:
        body, content_type = multipart([("photo.jpg", b"\0" * len(photo))])
        return "/v1/models/efficientnet_lite0/predict", body, {"Content-Type": content_type}
    outcome = closed_loop(port, refused, 4, seconds, server_pids, warmup=1.0)
    return outcome.server_cpu * seconds * 1000 / max(1, sum(outcome.statuses.values()))


def _print_compute_bound(batch: int, outcome: LoadResult, http_ms: float) -> float:
    """The bound, printed beside what predict reached; returned for the goals."""
    from core.parallel import cpu_count

    decode_ms, served_ms, single_ms, bound = compute_bound(batch)
    with_http = 1000 * cpu_count() / (1000 * cpu_count() / bound + http_ms)
    print(f"  compute bound at batch {batch}, measured now: decode+preprocess {decode_ms:.1f} core-ms + ORT "
          f"{min(served_ms, single_ms):.1f} core-ms per image ({served_ms:.1f} on a thread per core, {single_ms:.1f} "
          f"on one) -> {bound:.0f} images/s (no HTTP, no load generator); predict at 8 clients reaches "
          f"{outcome.ok_per_second / bound:.0%} of it (goal >= 90%). With HTTP ({http_ms:.1f} core-ms a request, "
          f"measured on refused uploads): {with_http:.0f} requests/s", flush=True)
    return bound


@contextmanager
def _peer_servers(wanted: bool) -> Iterator[dict[str, tuple[int, list[int]]]]:
    """PyTriton without and with dynamic batching, both running (none unless `wanted`)."""
    if not wanted:
        yield {}
        return
    from bench.peers import pytriton

    with pytriton.running(False) as plain, pytriton.running(True) as batching:
        yield {"pytriton": plain, "pytriton batch 8/5ms": batching}


@contextmanager
def _before_server(revision: str | None, settings: dict) -> Iterator[tuple[int, list[int]] | None]:
    """A server of `revision` from a temporary git worktree (None without a revision)."""
    from bench.common import running_server_process

    if revision is None:
        yield None
        return
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="gazer-load-before-") as folder:
        checkout = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(checkout), revision], cwd=root, check=True,
                       capture_output=True)
        try:
            with running_server_process(8766, checkout, **settings) as server:
                yield server
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=root, check=False)


def _goals(results: dict[str, dict[int, LoadResult]], bound: float | None) -> None:
    predict = results.get("predict", {})
    print("\n== goals")
    if 8 in predict:
        for clients in (32, 128):
            if clients in predict:
                outcome = predict[clients]
                print(f"  predict {clients} clients: {outcome.ok_per_second / predict[8].ok_per_second:.2f}x the 8-client "
                      f"req/s (goal >= 1), p99 {outcome.percentile(0.99) / predict[8].percentile(0.99):.2f}x the "
                      f"8-client p99 (goal <= 4), codes {sorted(outcome.statuses)} (goal: 200 and 503 only)")
    for name, goal in (("gradcam", 2.0), ("layercam", None), ("gradcam-blocks15", 2.0), ("ig32", 1.5)):
        runs = results.get(name, {})
        if 1 in runs and 8 in runs:
            print(f"  {name} 8 clients / 1 client throughput: {runs[8].ok_per_second / runs[1].ok_per_second:.2f}x"
                  + (f" (goal >= {goal})" if goal else ""))
    for name, outputs in (("cam", "the default outputs"), ("cam-heatmap", "outputs=heatmap")):
        if f"{name} alternating" in results:
            cam, paired = results[f"{name} alternating"][1], results[f"{name} alternating predict"][1]
            print(f"  cam with {outputs} / predict, p50 at 1 client alternating the two: "
                  f"{cam.percentile(0.5) / paired.percentile(0.5):.2f}x (goal <= 1.3)")
    triton = results.get("pytriton batch 8/5ms", {})
    if 8 in predict and 8 in triton:
        print(f"  predict 8 clients vs PyTriton dynamic batching: {predict[8].ok_per_second / triton[8].ok_per_second:.2f}x "
              f"req/s (goal >= 1.5), p99 {predict[8].percentile(0.99):.0f} vs {triton[8].percentile(0.99):.0f} ms")
        if bound:
            needed = 1.5 * triton[8].ok_per_second
            print(f"    1.5x PyTriton's {triton[8].ok_per_second:.1f} req/s would be {needed / bound:.0%} of the "
                  f"compute bound ({bound:.0f} images/s), which leaves out HTTP and the load generator")
    plain = results.get("pytriton", {})
    if 1 in predict and 1 in plain:
        print(f"  predict 1 client p50: {predict[1].percentile(0.5):.1f} ms vs PyTriton without batching "
              f"{plain[1].percentile(0.5):.1f} ms (goal: <=)")


if __name__ == "__main__":
    main()
