"""tests/bench/bench_profile.py: reading collapsed stacks and per-thread CPU, and py-spy itself
on a real process (the profiler the benchmark depends on must attach and name the hot function)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.bench.bench_profile import _record, cpu_by_thread, fold_stats, main, thread_cpu_s


def test_folded_stacks_count_own_and_inclusive_samples_with_recursion_once_and_threads_apart() -> None:
    stats = fold_stats([
        "thread (101): MainThread;main (app.py:1);handle (app.py:5);decode (codec.py:9) 6\n",
        "thread (101): MainThread;main (app.py:1);handle (app.py:5) 2\n",
        # a recursive stack: `walk` is under itself, yet counts once toward its inclusive samples
        "thread (202): worker;walk (tree.py:3);walk (tree.py:3);leaf (tree.py:8) 4\n",
        "thread (303);poll (sh.py:1) 3\n",  # a thread Python never named
        "not a stack line\n",
        "\n",
    ])
    assert stats.total == 15
    assert stats.own == {"decode (codec.py:9)": 6, "handle (app.py:5)": 2, "leaf (tree.py:8)": 4, "poll (sh.py:1)": 3}
    assert stats.inclusive["main (app.py:1)"] == 8
    assert stats.inclusive["handle (app.py:5)"] == 8
    assert stats.inclusive["walk (tree.py:3)"] == 4
    assert all(not frame.startswith("thread (") for frame in stats.inclusive)
    assert stats.threads == {"thread (101): MainThread": 8, "thread (202): worker": 4, "thread (303)": 3}
    assert stats.thread_names == {101: "MainThread", 202: "worker"}
    assert stats.share(stats.own["decode (codec.py:9)"]) == 0.4


def test_cpu_by_thread_is_what_each_thread_used_between_readings_busiest_first_under_python_names() -> None:
    before = {1: ("python", 1.0), 2: ("python", 5.0)}
    after = {1: ("python", 1.5), 2: ("python", 5.1), 3: ("event_engine", 0.3)}  # 3 started in between
    assert cpu_by_thread(before, after, {1: "MainThread"}) == [
        (1, "MainThread", 0.5), (3, "event_engine", 0.3), (2, "python", 5.1 - 5.0),
    ]


def test_thread_cpu_of_this_process_shows_a_busy_thread_above_an_idle_one() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    busy = threading.Thread(target=spin)
    idle = threading.Thread(target=stop.wait)
    busy.start()
    idle.start()
    try:
        before = thread_cpu_s(os.getpid())
        time.sleep(0.5)
        after = thread_cpu_s(os.getpid())
    finally:
        stop.set()
        busy.join()
        idle.join()
    spent = {tid: used for tid, _, used in cpu_by_thread(before, after)}
    assert busy.native_id is not None and idle.native_id is not None
    assert spent[busy.native_id] > 0.1
    assert spent[busy.native_id] > 5 * spent[idle.native_id]


def test_py_spy_attaches_to_a_running_python_process_and_names_its_hot_function(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        def hot_loop_for_the_profiler():
            total = 0
            while True:
                total += sum(i * i for i in range(500))
        print("ready", flush=True)
        hot_loop_for_the_profiler()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        folded = tmp_path / "child.folded"
        recorder = _record(child.pid, 2, all_samples=False, path=folded)
        _, stderr = recorder.communicate(timeout=60)
        assert recorder.returncode == 0, stderr.decode(errors="replace")
    finally:
        child.kill()
        child.wait()
    stats = fold_stats(folded.read_text().splitlines())
    assert stats.total > 50  # 2 s at 200 Hz, GIL holders only: the loop holds it throughout
    # the samples fall in the loop or its generator expression (py-spy does not always link a
    # generator's frame to its caller's, so the loop is not under every stack)
    hot = [n for frame, n in stats.own.items() if frame.startswith("hot_loop_for_the_profiler")]
    assert stats.share(sum(hot)) > 0.9
    assert list(stats.threads) == [f"thread ({child.pid})"]  # -c never imported threading: no name


@pytest.mark.parametrize("argv", [["--rows", "0"], ["--load", "stream", "--rows", "8"]])
def test_rows_per_call_is_refused_unless_positive_and_for_unary_calls(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # refused before any group starts: a stream has no calls to put rows in
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "--rows takes a positive count, with --load unary" in capsys.readouterr().err
