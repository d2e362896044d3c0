"""bfloat16 on the wire (compression="bf16"): the codec, and the ring's bf16_sum on 2 and 4 ranks."""
import json
import os

import numpy as np
import pytest

from comm.arrays import check_op, from_bf16, to_bf16
from dist_utils import run_zmq

WORKER = '''
import json, sys
import numpy as np
import comm
from comm.arrays import from_bf16, to_bf16
c = comm.init("zmq")
x = np.random.default_rng(c.rank).normal(size=100003).astype(np.float32)
exact = x.copy()
c.allreduce(exact, op="sum")
h = to_bf16(x)
c.allreduce(h, op="bf16_sum")
got = from_bf16(h)
with open(f"{sys.argv[1]}.rank{c.rank}.json", "w") as f:
    json.dump({"max_abs": float(np.abs(got - exact).max()), "scale": float(np.abs(exact).max()),
               "median_rel": float(np.median(np.abs(got - exact) / (np.abs(exact) + 1e-3))),
               "digest": h.tobytes().hex()[:64] + str(int(h.astype(np.int64).sum()))}, f)
comm.finalize()
'''


def test_codec_rounds_to_nearest_and_keeps_specials():
    x = np.array([1.0, -2.5, 1.01171875, -1.01171875, 1.0 + 2 ** -9, np.inf, -np.inf, -0.0, 1e-40], np.float32)
    y = from_bf16(to_bf16(x))
    assert y[:4].tolist() == [1.0, -2.5, 1.015625, -1.015625]         # nearest bfloat16 values
    assert y[4] == 1.0 and np.isinf(y[5]) and y[5] > 0 and np.isinf(y[6]) and y[6] < 0
    assert y[7] == 0 and np.signbit(y[7])
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFFFFFFFF], np.uint32).view(np.float32)
    assert np.isnan(from_bf16(to_bf16(nans))).all()                    # no carry turns NaN into 0 or -0
    big = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    exact = from_bf16(to_bf16(big))
    np.testing.assert_array_equal(from_bf16(to_bf16(exact)), exact)   # representable values are kept
    assert np.max(np.abs(exact - big) / np.abs(big)) <= 2 ** -8
    with pytest.raises(TypeError, match="bf16_sum.*uint16"):
        check_op("bf16_sum", np.float32)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [2, 4])
def test_bf16_sum_across_ranks_is_within_bfloat16_rounding_and_identical_everywhere(tmp_path, n):
    script = tmp_path / "w.py"
    script.write_text(WORKER)
    out = tmp_path / "r"
    for r, (rc, so, se) in enumerate(run_zmq(n, [str(script), str(out)], timeout=90,
                                             env={"PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})):
        assert rc == 0, f"rank {r}: {se[-2000:]}"
    res = [json.load(open(f"{out}.rank{r}.json")) for r in range(n)]
    assert len({x["digest"] for x in res}) == 1                           # bit-identical on every rank
    for x in res:
        assert x["median_rel"] < 4e-3 and x["max_abs"] <= 2 ** -7 * x["scale"], x
