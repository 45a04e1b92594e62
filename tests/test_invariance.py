"""examples/invariance.py: the Layer Normalization paper's Table 1 (invariance under re-scaling and
re-centering of the weights and the data), measured with lnorm. Runs the example as
tests/test_examples.py runs the others, and checks the printed table and the exit status."""

import importlib.util
import os
import subprocess
import sys
import time

import pytest

EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPT = os.path.join(EXAMPLES_DIR, "invariance.py")


def _load_example(name):
    """examples/<name>.py as a module (the examples folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"lnorm_example_{name}",
                                                  os.path.join(EXAMPLES_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


I, N = "invariant", "no"

# Table 1 of Ba, Kiros and Hinton (2016), written out here independently of the example. Columns:
# weight matrix re-scaling, weight matrix re-centering, weight vector re-scaling, dataset
# re-scaling, dataset re-centering, single training case re-scaling.
PAPER_TABLE = {
    ("Batch norm", "linear"): [I, N, I, I, I, N],
    ("Weight norm", "linear"): [I, N, I, N, N, N],
    ("Layer norm", "linear"): [I, I, N, I, N, I],
}

# The rows the paper does not have (see the README section for the reasons).
ADDED_ROWS = {
    ("RMSNorm", "linear"): [I, N, N, I, N, I],
    ("Weight standardization", "linear"): [I, N, I, N, N, N],
    ("Batch norm", "1x1 conv"): [I, N, I, I, I, N],
    ("Layer norm", "1x1 conv"): [I, N, N, I, N, I],
    ("Instance norm", "1x1 conv"): [I, N, I, I, I, I],
    ("Group norm", "1x1 conv"): [I, N, N, I, N, I],
    ("WS + group norm", "1x1 conv"): [I, N, I, I, N, I],
}


def _parse_table(printed):
    """{(normalization, layer): [six entries], reference} from the printed Markdown table."""
    rows = {}
    for line in printed.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[1] in ("linear", "1x1 conv"):
            rows[(cells[0], cells[1])] = (cells[2:8], cells[8])
    return rows


@pytest.fixture(scope="module")
def example():
    return _load_example("invariance")


def test_invariance_table_matches_the_paper(example, capsys):
    start = time.perf_counter()
    status = example.main([])
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert elapsed < 120, f"the example took {elapsed:.0f} s"  # a hang, not a speed goal
    rows = _parse_table(printed)
    assert list(rows) == list(PAPER_TABLE) + list(ADDED_ROWS)  # every row, in this order
    for key, entries in PAPER_TABLE.items():
        assert rows[key] == (entries, "paper: agrees"), key
    for key, entries in ADDED_ROWS.items():
        assert rows[key] == (entries, "derived: agrees"), key
    assert "agree with the paper" in printed and "agree with their derivation" in printed
    assert "DIFFER" not in printed and "undecided" not in printed


def test_invariance_entries_are_clearly_separated(example):
    """Every invariant entry changes by rounding only, every other one by a lot: the verdicts do
    not hang on the thresholds. Holds for other random layers too."""
    for seed in (0, 1, 2):
        changes = [c for row in example.measure(seed).values() for c in row]
        assert all(c < 1e-12 or c > 1e-2 for c in changes), seed


def test_invariance_exits_nonzero_when_a_paper_entry_differs(example, monkeypatch, capsys):
    """A wrong entry in the paper's rows (here: layer norm invariant to weight vector re-scaling)
    is marked in the table and makes the script fail."""
    wrong = dict(example.PAPER)
    wrong["Layer norm"] = (True, True, True, True, False, True)
    monkeypatch.setattr(example, "PAPER", wrong)
    assert example.main([]) == 1
    printed = capsys.readouterr().out
    rows = _parse_table(printed)
    entries, verdict = rows[("Layer norm", "linear")]
    assert entries[2] == "**no** (expected invariant)"
    assert verdict == "paper: DIFFERS (weight vector re-scaling)"
    assert "DIFFER FROM THE PAPER" in printed


def test_invariance_exits_nonzero_when_an_added_row_differs(example, monkeypatch, capsys):
    wrong = dict(example.EXPECTED)
    wrong[("Group norm", "1x1 conv")] = (True, False, True, True, False, True)
    monkeypatch.setattr(example, "EXPECTED", wrong)
    assert example.main([]) == 1
    printed = capsys.readouterr().out
    assert _parse_table(printed)[("Group norm", "1x1 conv")][1] == \
        "derived: DIFFERS (weight vector re-scaling)"
    assert "agree with the paper" in printed and "DIFFER FROM THEIR DERIVATION" in printed


def test_invariance_verbose_prints_every_change(example, capsys):
    assert example.main(["--verbose", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "relative change of the normalized output" in printed
    assert sum(line.startswith("WS + group norm") for line in printed.splitlines()) == 1


def test_invariance_script_exit_status():
    """As a script, from another working directory: exit status 0 and the table on stdout."""
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(EXAMPLES_DIR) + os.sep + "tests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert set(_parse_table(done.stdout)) == set(PAPER_TABLE) | set(ADDED_ROWS)


def test_invariance_side_claims(example):
    """Two remarks of the README section. Weight standardization is invariant to the special
    re-centerings by a constant (every weight + c, or every input + c), since each standardized
    row sums to 0. A shift of the data that differs at each position also breaks batch norm's and
    instance norm's invariance to dataset re-centering (one shift per channel does not)."""
    import numpy as np

    rng = np.random.default_rng(9)
    w, x = rng.standard_normal((5, 6)), rng.standard_normal((8, 6))
    ws = example.NORMS["Weight standardization"]
    before = ws(example.linear, w, x)
    assert example._relative_change(before, ws(example.linear, w + 0.7, x)) < 1e-12
    assert example._relative_change(before, ws(example.linear, w, x - 1.3)) < 1e-12
    w, x = rng.standard_normal((8, 6, 1, 1)), rng.standard_normal((4, 6, 4, 4))
    per_channel = rng.uniform(-1, 1, (1, 6, 1, 1))
    per_pixel = rng.uniform(-1, 1, (1, 6, 4, 4))
    for name in ("Batch norm", "Instance norm"):
        norm = example.NORMS[name]
        before = norm(example.conv1x1, w, x)
        assert example._relative_change(before, norm(example.conv1x1, w, x + per_channel)) < 1e-12
        assert example._relative_change(before, norm(example.conv1x1, w, x + per_pixel)) > 1e-2
