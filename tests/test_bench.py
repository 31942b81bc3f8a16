import re
import subprocess
import sys

import pytest

from conftest import ROOT


def test_bench_prints_every_measurement_beside_its_slower_variant():
    result = subprocess.run([sys.executable, "tools/bench.py", "--device", "cpu", "--seconds", "0.05", "--batch-size",
                             "2", "--image-size", "64", "--cache-images", "2", "--workers", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("feature cache (no skips)", "feature cache (with skips)", "FLOP rate", "fine-tuned",
                 "decoder forward+backward", "FLOPs per image", "inference", "JPEG", "build the cache",
                 "load the finished cache"):
        assert name in out, name
    # every comparison line: a positive rate, then the slower variant's, and their ratio
    comparisons = re.findall(r"([\d.]+) (?:img/s|GFLOP/s)\s+vs [^:]+: ([\d.]+) (?:img/s|GFLOP/s) \(([\d.]+)x\)", out)
    assert len(comparisons) == 9
    for fast, slow, ratio in comparisons:
        assert float(fast) > 0 and float(slow) > 0
        # the ratio is of the unrounded rates: as close as the printed rounding (0.05) allows
        # (each rate is printed to 0.05: its relative error is 0.05 / rate, the two add up)
        assert float(ratio) == pytest.approx(float(fast) / float(slow),
                                             rel=0.05 / float(slow) + 0.05 / float(fast) + 0.01, abs=0.06)


def test_bench_predict_prints_both_runtimes_side_by_side():
    result = subprocess.run([sys.executable, "tools/bench_predict.py", "--images", "2", "--seconds", "0.05", "--device",
                             "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("start-up to the first mask", "2 photos, --overlay", "where the time goes", "decoding", "model",
                 "post-processing", "writing", "forward pass, batch 32, ONNX Runtime", "its FLOP rate",
                 "photo landed to its mask written", "the model alone, flip TTA", "% of it"):
        assert name in out, name
    assert len(re.findall(r"vs PyTorch: [\d.]+ s \([\d.]+x\)", out)) == 3
