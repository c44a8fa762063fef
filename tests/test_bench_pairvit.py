"""benchmarks/bench_pairvit.py runs end to end at toy size with the method's shape and defaults."""

import json
import sys

from imsim_lab.methods import get_method
from support import load_script


def _bench():
    return load_script("benchmarks/bench_pairvit.py")


def test_runs_at_toy_size_with_the_methods_defaults(monkeypatch, capsys):
    bench = _bench()
    monkeypatch.setattr(sys, "argv", ["bench_pairvit", "--queries", "3", "--refs", "2", "--top", "2", "--size", "32x16",
                                      "--depth", "1", "--batch", "4", "--repeats", "2", "--query-chunk", "2"])
    bench.main()
    out = json.loads(capsys.readouterr().out)
    defaults = get_method("pairvit").params
    # 3 queries x 2 candidates: 4 first views + 8 views each (every candidate re-scored), one model
    assert out["pairs"] == 6 and out["classifier_pairs"] == 6 * (4 + 8)
    assert out["decoding_threads"] == defaults["threads"] and out["reduced_decode"] is True
    assert out["prefetch"] is False  # auto on a CPU
    assert out["images_decoded_per_query"] == (3 + 6) / 3  # each candidate a reference of its own
    assert len(out["ratio_rounds"]) == 2 and out["ratio"] > 0 and out["cpu_ratio"] > 0
    assert 0 < out["bound_same_cores"] < 1 and out["decode_alone_seconds"] > 0
