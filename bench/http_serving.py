"""HTTP serving overhead, CAM's cost over a prediction, and batching of explanations.

  python -m bench.http_serving

Measures, with a real uvicorn server in a subprocess and EfficientNet-Lite0 at 224 on CPU:
  predict over HTTP vs the same decode + preprocess + ONNX Runtime run in-process, and vs a
  bare `session.run` on the preprocessed tensor; `cam` vs `predict` over HTTP; one `gradcam`
  request with 32 images vs 32 single-image requests.
"""

from __future__ import annotations


from core import imaging
from bench.common import interleaved, report, run_timed, running_server, served_model
from support import chelsea, encode, foolbox_imagenet_photos, multipart

MODEL = "efficientnet_lite0"


def main() -> None:
    photo = encode(chelsea())  # a 451 x 300 JPEG photo
    model = served_model(MODEL)
    batch, _ = imaging.preprocess([imaging.decode_image(photo, 10**8)], model.spec)
    session, input_name = model.predictor.session, model.predictor.input_name

    def in_process() -> None:
        image = imaging.decode_image(photo, 10**8)
        model.predictor.logits(imaging.preprocess([image], model.spec)[0])

    with running_server() as client:
        predict_body = multipart([("chelsea.jpg", photo)])
        cam_body = multipart([("chelsea.jpg", photo)], {"method": "cam"})
        cam_heatmap_body = multipart([("chelsea.jpg", photo)], {"method": "cam", "outputs": "heatmap"})
        cam_map_body = multipart([("chelsea.jpg", photo)], {"method": "cam", "outputs": "map"})
        predict_path, explain_path = f"/v1/models/{MODEL}/predict", f"/v1/models/{MODEL}/explain"
        times = interleaved({
            "http_predict": lambda: client.post(predict_path, *predict_body),
            "http_cam": lambda: client.post(explain_path, *cam_body),
            "http_cam_heatmap": lambda: client.post(explain_path, *cam_heatmap_body),
            "http_cam_map": lambda: client.post(explain_path, *cam_map_body),
            "in_process": in_process,
            "session_run": lambda: session.run(["logits"], {input_name: batch}),
        }, rounds=15, per_round=15)
        report("predict over HTTP (p50, ms; chelsea 451x300 JPEG)", [
            ("HTTP predict", f"{times['http_predict']:.2f}"),
            ("in-process decode+preprocess+ORT", f"{times['in_process']:.2f}"),
            ("bare session.run", f"{times['session_run']:.2f}"),
            ("HTTP / in-process", f"{times.ratio('http_predict', 'in_process'):.2f}x  (goal <= 1.3x)"),
            ("HTTP / session.run", f"{times.ratio('http_predict', 'session_run'):.2f}x  (goal <= 2.5x)"),
            ("HTTP cam (heatmap + overlay PNGs)", f"{times['http_cam']:.2f}"),
            ("cam / predict", f"{times.ratio('http_cam', 'http_predict'):.2f}x  (goal <= 1.15x)"),
            ("HTTP cam, outputs=heatmap (grey PNG only)", f"{times['http_cam_heatmap']:.2f}"),
            ("cam (outputs=heatmap) / predict", f"{times.ratio('http_cam_heatmap', 'http_predict'):.2f}x"),
            ("HTTP cam, outputs=map (no PNGs)", f"{times['http_cam_map']:.2f}"),
            ("cam (outputs=map) / predict", f"{times.ratio('http_cam_map', 'http_predict'):.2f}x"),
        ])

        photos = [path.read_bytes() for path, _ in foolbox_imagenet_photos()]
        thirty_two = [(f"{i}.jpg", photos[i % len(photos)]) for i in range(32)]
        batched = multipart(thirty_two, {"method": "gradcam"})
        singles = [multipart([item], {"method": "gradcam"}) for item in thirty_two]

        def one_request() -> None:
            client.post(explain_path, *batched)

        def thirty_two_requests() -> None:
            for body in singles:
                client.post(explain_path, *body)

        times = interleaved({"batched": one_request, "singles": thirty_two_requests},
                            rounds=3, per_round=1, warmup=1)
        report("gradcam: 32 images in one request vs 32 requests (ms per image)", [
            ("one request of 32", f"{times['batched'] / 32:.2f}"),
            ("32 single requests", f"{times['singles'] / 32:.2f}"),
            ("speed-up per image", f"{times.ratio('singles', 'batched'):.2f}x  (goal >= 1.5x)"),
        ])


if __name__ == "__main__":
    run_timed(main)
