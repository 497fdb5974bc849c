"""Large files validate in bounded memory: 200k rows (~40 MB each file) must not be held in memory.

The files are generated at test time. Validation runs in a fresh interpreter so that its peak RSS
(ru_maxrss) measures validation alone; holding the rows as Python dicts would need several times the file size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

N = 200_000
PAD = "x" * 150  # ~200-byte rows


def row(i: int) -> dict:
    return {"q": f"question {i} {PAD}", "a": f"answer {i}"}


def test_200k_rows_validate_streaming_in_bounded_memory(tmp_path):
    lines = tmp_path / "big.jsonl"
    array = tmp_path / "big.json"
    with open(lines, "w") as f_lines, open(array, "w") as f_array:
        f_array.write("[\n")
        for i in range(N):
            r = row(i)
            if i == 150_000:
                f_lines.write('{"q": "broken\n')  # line 150001
            elif i == N - 2:
                f_lines.write(json.dumps({"q": "empty answer", "a": ""}) + "\n")  # line 199999
            else:
                f_lines.write(json.dumps(r) + "\n")
            f_array.write(json.dumps(r) + (",\n" if i < N - 1 else "\n"))
        f_array.write("]\n")
    size_mb = lines.stat().st_size / 2**20
    assert size_mb > 35

    script = textwrap.dedent(
        """
        import json, resource, sys
        import numpy  # imported by the report's statistics; count it in the baseline
        from tuneforge.data import DataOptions, validate_source

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        base = peak_mb()
        out = {}
        for path in sys.argv[1:]:
            r = validate_source(path, DataOptions(prompt_template="Q: {q}\\nA: {a}"))
            out[path] = dict(n_rows=r.n_rows, n_trainable=r.n_trainable, errors=[e.message for e in r.errors],
                             counts=r.error_counts, warnings=[w.kind for w in r.warnings])
        out["growth_mb"] = peak_mb() - base
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(lines), str(array)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    big = out[str(lines)]
    assert big["n_rows"] == N and big["n_trainable"] == N - 2
    assert big["errors"] == [
        "big.jsonl line 150001 column 7: invalid JSON: Unterminated string; the line ends in the middle of a record",
        "big.jsonl line 199999: field 'a' is empty; the template needs it as the completion",
    ]
    arr = out[str(array)]
    assert arr["n_rows"] == N and arr["n_trainable"] == N and arr["errors"] == []
    # Bounded: a small fraction of one ~40 MB file (per-row state is a 16-byte fingerprint).
    assert out["growth_mb"] < 25, out["growth_mb"]
