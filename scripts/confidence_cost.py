"""What the confidence and the frame score cost beside the forward pass, step by step.

    python scripts/confidence_cost.py eacnet_dab 480 360

For OpenVINO and onnxruntime (fp32) at WxH on one CamVid val frame: the forward pass (OpenVINO:
ids only, ids + confidence in its graph, logits), the argmax of the logits with and without
the confidence (the onnxruntime/torch path), and the frame score. Each the least of 15
interleaved runs: on a shared CPU other processes only ever add time. `eacnet bench-pipeline
--confidence` times the same inside the node's whole frame path.
"""

from __future__ import annotations

import sys
import time

import cv2

from eacnet_core.data.roots import find_camvid
from eacnet_core.infer.confidence import frame_score, ids_and_confidence
from eacnet_core.infer.segmenter import Segmenter, SegmenterOptions, _argmax_classes

RUNS = 15


def least_ms(run, *args) -> float:
    start = time.perf_counter()
    run(*args)
    return 1000 * (time.perf_counter() - start)


def main(model: str, width: int, height: int) -> None:
    root = find_camvid()
    if root is None:
        raise SystemExit("no CamVid found ($EACNET_DATA or ../shared/data/CamVid)")
    bgr = cv2.resize(cv2.imread(str(sorted((root / "val").glob("*.png"))[0])), (width, height))
    for backend in ("openvino", "onnxruntime"):
        seg = Segmenter.from_name(model, options=SegmenterOptions(backend=backend, precision="fp32",
                                                                  choice_cache=False))
        batch, engine = seg.preprocess(bgr), seg.engine(backend, "fp32")
        steps = {"forward (logits)": (engine.runner(height, width), batch)}
        if backend == "openvino":
            steps["forward (ids)"] = (engine.ids_runner(height, width), batch)
            steps["forward (ids + confidence)"] = (engine.ids_confidence_runner(height, width), batch)
        logits = steps["forward (logits)"][0](batch)
        _, confidence = ids_and_confidence(logits)
        steps.update({"argmax": (_argmax_classes, logits), "argmax + confidence": (ids_and_confidence, logits),
                      "frame score": (frame_score, confidence, bgr)})
        for run, *args in steps.values():
            run(*args)  # first runs allocate
        times = {name: [] for name in steps}
        for _ in range(RUNS):
            for name, (run, *args) in steps.items():
                times[name].append(least_ms(run, *args))
        print(f"{model} {width}x{height} {backend}: "
              + ", ".join(f"{name} {min(ms):.2f} ms" for name, ms in times.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
