"""replica/cli.py (named apart from tests/marketplace/test_cli.py): settling the heap once a server has started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# run in a child: settle_heap changes the process's collector, which pytest's process must keep
PROBE = """
import gc, json, weakref
import torch  # what a replica imports before it serves
from replica.cli import FULL_COLLECTION_EVERY, settle_heap

settle_heap()
frozen = gc.get_freeze_count()
tracked = len(gc.get_objects())

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a reference cycle made while serving
alive = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({"frozen": frozen, "tracked": tracked, "cycle_collected": alive() is None,
                  "threshold": gc.get_threshold(), "every": FULL_COLLECTION_EVERY, "enabled": gc.isenabled()}))
"""


def test_settling_the_heap_hides_start_up_objects_from_the_collector_but_still_collects_cycles() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["frozen"] > 50_000  # torch alone leaves this many long-lived objects
    assert seen["tracked"] < seen["frozen"] // 10  # what the collector still walks
    assert seen["enabled"] and seen["cycle_collected"]  # garbage made while serving is still collected
    assert seen["threshold"][2] == seen["every"] == 100
