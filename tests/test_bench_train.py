"""benchmarks/bench_train.py: its CPU count sees the loader workers, and it runs end to end at toy size."""

import multiprocessing
import time

from support import load_script


def _bench():
    return load_script("benchmarks/bench_train.py")


def _spin(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
    time.sleep(30)  # stays alive: a live child is what the bench reads (workers end only after the epoch)


def test_process_tree_cpu_counts_live_children():
    bench = _bench()
    before = bench.process_tree_cpu()
    child = multiprocessing.get_context("fork").Process(target=_spin, args=(0.6,), daemon=True)
    child.start()
    try:
        deadline = time.time() + 20
        while bench.process_tree_cpu() - before < 0.5 and time.time() < deadline:
            time.sleep(0.1)  # the parent itself uses almost no CPU while it waits
        assert bench.process_tree_cpu() - before >= 0.5
    finally:
        child.kill()
        child.join()


def test_runs_at_toy_size_and_prints_each_recipe(monkeypatch, capsys):
    bench = _bench()
    monkeypatch.setattr("sys.argv", ["bench_train.py", "--scales", "lesson", "--backbone", "test_resnet", "--size", "32",
                                     "--dim", "16", "--batch-size", "4", "--steps", "1", "--rounds", "1", "--workers", "1"])
    bench.main()
    out = capsys.readouterr().out
    for recipe in ("ssquare", "sscd"):
        assert f"{recipe} at 32 px, batch 4:" in out
    assert out.count("kept ") == 2 and out.count("the views alone") == 2
    assert bench.published_size("ssquare") == 160 and bench.published_size("sscd") == 224
