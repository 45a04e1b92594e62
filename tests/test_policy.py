"""The per-CPU store and prefetch policy (lnorm/policy.hpp): the table's choice for this CPU, the
LNORM_STORES / LNORM_PREFETCH / LNORM_CARRY / LNORM_FETCH overrides, the per-op choice of kernel set,
and that no choice changes a single bit of any result."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import lnorm


def _cpuinfo():
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    fields.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return fields


_VARIABLES = ("LNORM_STORES", "LNORM_PREFETCH", "LNORM_CARRY", "LNORM_FETCH", "LNORM_ISA")


def _run(env_extra, code):
    env = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out


def test_policy_fields():
    p = lnorm.config()["policy"]
    assert set(p) == {"stream_float32", "stream_16bit", "stream_min_bytes", "prefetch_float32", "prefetch_16bit",
                      "carry_min_bytes", "add_carry_min_bytes", "prefetch_l1_max", "prefetch_twice", "split_loads",
                      "avx2_ops", "source"}
    assert p["stream_min_bytes"] > 0
    assert 0 <= p["prefetch_float32"] <= 65536 and 0 <= p["prefetch_16bit"] <= 65536
    assert 0 <= p["carry_min_bytes"] <= 1 << 30 and p["prefetch_l1_max"] >= 0 and p["add_carry_min_bytes"] >= 0
    assert isinstance(p["prefetch_twice"], bool) and isinstance(p["split_loads"], bool)
    assert set(p["avx2_ops"]) <= {"forward_float32"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_policy_follows_the_cpu_table():
    if any(os.environ.get(v) for v in _VARIABLES):
        pytest.skip("overridden by the environment")
    info = _cpuinfo()
    if "vendor_id" not in info:
        pytest.skip("not an x86 /proc/cpuinfo")
    p = lnorm.config()["policy"]
    family, model = int(info.get("cpu family", "0")), int(info.get("model", "0"))
    zen = info["vendor_id"] == "AuthenticAMD" and family >= 0x17
    zen3 = zen and family == 0x19 and (model < 0x10 or 0x20 <= model < 0x60)
    assert p["source"] == ("AMD Zen 3" if zen3 else "AMD Zen" if zen else "Intel and other CPUs")
    # Zen 3: the fused add & norm takes two sweeps at every row size; elsewhere it always carries.
    assert p["add_carry_min_bytes"] == (1 << 62 if zen3 else 0)
    assert p["stream_float32"] is zen  # Intel: float32 keeps plain stores
    assert p["stream_16bit"] is True
    # Zen: rows of up to 64 KiB take two sweeps, the next row prefetched into L2; Intel: every row carries.
    assert (p["carry_min_bytes"], p["prefetch_l1_max"]) == ((65537, 0) if zen else (0, 16384))
    # Zen: two prefetches per line, float32 read in halves by AVX-512, and the float32 forward rows on AVX2.
    assert (p["prefetch_twice"], p["split_loads"]) == (zen, zen)
    assert p["avx2_ops"] == (["forward_float32"] if zen else [])


@pytest.mark.parametrize("env, expect", [
    ({"LNORM_STORES": "plain"}, {"stream_float32": False, "stream_16bit": False, "source": "LNORM_STORES"}),
    ({"LNORM_STORES": "streaming"}, {"stream_float32": True, "stream_16bit": True, "source": "LNORM_STORES"}),
    ({"LNORM_PREFETCH": "0"}, {"prefetch_float32": 0, "prefetch_16bit": 0, "source": "LNORM_PREFETCH"}),
    ({"LNORM_STORES": "plain", "LNORM_PREFETCH": "4096"},
     {"stream_float32": False, "prefetch_16bit": 4096, "source": "LNORM_STORES, LNORM_PREFETCH"}),
    ({"LNORM_CARRY": "0"}, {"carry_min_bytes": 0, "add_carry_min_bytes": 0, "source": "LNORM_CARRY"}),
    ({"LNORM_STORES": "streaming", "LNORM_CARRY": str(1 << 30)},
     {"stream_16bit": True, "carry_min_bytes": 1 << 30, "add_carry_min_bytes": 1 << 30,
      "source": "LNORM_STORES, LNORM_CARRY"}),
    ({"LNORM_PREFETCH": "64", "LNORM_CARRY": "4096"},
     {"prefetch_float32": 64, "carry_min_bytes": 4096, "add_carry_min_bytes": 4096,
      "source": "LNORM_PREFETCH, LNORM_CARRY"}),
    ({"LNORM_FETCH": "plain"}, {"prefetch_twice": False, "split_loads": False, "source": "LNORM_FETCH"}),
    ({"LNORM_FETCH": "split", "LNORM_STORES": "plain", "LNORM_CARRY": "0", "LNORM_PREFETCH": "0"},
     {"prefetch_twice": True, "split_loads": True, "stream_16bit": False, "carry_min_bytes": 0,
      "source": "LNORM_STORES, LNORM_PREFETCH, LNORM_CARRY, LNORM_FETCH"}),
])
def test_policy_environment_overrides(env, expect):
    out = _run(env, "import json, lnorm; print(json.dumps(lnorm.config()['policy']))")
    p = json.loads(out.stdout)
    for k, v in expect.items():
        assert p[k] == v, (k, p)


@pytest.mark.parametrize("var, value", [("LNORM_STORES", "fast"), ("LNORM_STORES", "Plain"),
                                        ("LNORM_PREFETCH", "-1"), ("LNORM_PREFETCH", "65537"),
                                        ("LNORM_PREFETCH", "2k"), ("LNORM_CARRY", "-1"),
                                        ("LNORM_CARRY", str((1 << 30) + 1)), ("LNORM_FETCH", "halves")])
def test_policy_environment_unusable_values_warn_and_are_ignored(var, value):
    code = ("import json, warnings\nwarnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n    import lnorm\n"
            "print(json.dumps([[str(x.message) for x in w if x.category is RuntimeWarning], lnorm.config()['policy']]))")
    messages, p = json.loads(_run({var: value}, code).stdout)
    assert any(m.startswith(f"{var}=") for m in messages), messages
    base = json.loads(_run({}, "import json, lnorm; print(json.dumps(lnorm.config()['policy']))").stdout)
    assert p == base


# Every op on outputs over every table row's streaming threshold (32 MiB at most), odd widths (a head before the aligned
# stores, a tail after), run under each policy in its own process: the bytes of every output must be
# the same under all of them, and right.
_SAME_BITS = r"""
import hashlib, json, sys
import ml_dtypes
import numpy as np
import lnorm
out = {}
rng = np.random.default_rng(20261206)
for dtype, rows, cols in (("float32", 4103, 2049), ("float16", 8201, 2053), ("bfloat16", 8199, 2051)):
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    x = (rng.standard_normal((rows, cols)) * 3 + 5).astype(dt)
    r = rng.standard_normal((rows, cols)).astype(dt)
    dy = rng.standard_normal((rows, cols)).astype(dt)
    w = rng.standard_normal(cols).astype(dt)
    b = rng.standard_normal(cols).astype(dt)
    for threads in (1, 2):
        lnorm.set_num_threads(threads)
        h = hashlib.sha256()
        y = np.empty_like(x)
        lnorm.layer_norm(x, w, b, eps=1e-5, out=y)
        h.update(y.tobytes())
        ref = (x.astype(np.float64) - x.astype(np.float64).mean(-1, keepdims=True))
        ref = ref / np.sqrt(x.astype(np.float64).var(-1, keepdims=True) + 1e-5) * w.astype(np.float64) + b.astype(np.float64)
        tol = 1e-4 if dtype == "float32" else 2e-2
        assert np.allclose(y.astype(np.float64), ref, rtol=tol, atol=tol * 4), dtype
        lnorm.rms_norm(x, w, eps=1e-6, out=y)
        h.update(y.tobytes())
        y2, s = lnorm.add_layer_norm(x, r, w, b, eps=1e-5)
        h.update(y2.tobytes()); h.update(s.tobytes())
        y3, s3 = lnorm.add_rms_norm(x, r, w, eps=1e-6)
        h.update(y3.tobytes()); h.update(s3.tobytes())
        _, mean, rstd = lnorm.layer_norm(x, w, b, eps=1e-5, return_stats=True)
        dx, dw, db = lnorm.layer_norm_backward(dy, x, mean, rstd, w)
        h.update(dx.tobytes()); h.update(np.asarray(dw).tobytes()); h.update(np.asarray(db).tobytes())
        out[f"{dtype}/{threads}"] = h.hexdigest()
print(json.dumps(out))
"""


_POLICIES = (
    {"LNORM_STORES": "plain", "LNORM_PREFETCH": "0"},
    {"LNORM_STORES": "streaming", "LNORM_PREFETCH": "0"},
    {"LNORM_STORES": "streaming", "LNORM_PREFETCH": "4096"},
    {"LNORM_STORES": "plain", "LNORM_PREFETCH": "640"},
    {"LNORM_STORES": "streaming", "LNORM_CARRY": "0"},  # every row carries the next row's sums
    {"LNORM_STORES": "streaming", "LNORM_CARRY": str(1 << 30)},  # every row takes two sweeps
    {"LNORM_STORES": "plain", "LNORM_CARRY": str(1 << 30)},
    {"LNORM_FETCH": "plain", "LNORM_CARRY": str(1 << 30)},  # whole loads, one prefetch per line
    {"LNORM_FETCH": "split", "LNORM_CARRY": str(1 << 30), "LNORM_STORES": "streaming"},  # halves, two per line
    {},
)


# The kernel set as the CPU chooses it (with the policy's per-op choice), and forced AVX-512, whose
# float32 loads come in halves under LNORM_FETCH=split: each compared within itself.
@pytest.mark.slow
@pytest.mark.parametrize("isa", ["chosen", "avx512"])
def test_policy_never_changes_results(isa):
    if isa != "chosen" and isa not in lnorm.available_isas():
        pytest.skip(f"no {isa} here")
    forced = {} if isa == "chosen" else {"LNORM_ISA": isa}
    policies = _POLICIES if isa == "chosen" else _POLICIES[-4:]
    runs = [_run({**forced, **env}, _SAME_BITS) for env in policies]
    digests = [json.loads(r.stdout) for r in runs]
    for d in digests[1:]:
        assert d == digests[0]
    for dtype in ("float32", "float16", "bfloat16"):
        assert digests[0][f"{dtype}/1"] == digests[0][f"{dtype}/2"]


# The channel norms likewise, on outputs over the streaming threshold: NCHW lines (pipelined units,
# BatchNorm eval's walk in memory order, each line prefetched ahead by the policy's distance) and
# NHWC pixels of 100 channels (pixels 16 bytes off a vector every other one, so each streams after a
# plain head), of 104 float32 (every pixel as far off: one stream across the pixels) and of 96
# bfloat16 (a multiple of every set's split pair: contiguous pixels go as one line in split order),
# y at NumPy's alignment and one element past it. Same bits under every policy and
# thread count, and right (within float32's or bfloat16's rounding of 1 + |y|). bfloat16 also runs
# with NaN and Inf in x and NaNs of every payload in float32 weights and running statistics: its lines
# store in split order, rounding without a NaN guard, so a payload reaching the rounding could turn a
# NaN into zero; y must be NaN exactly where the float64 reference is.
_CHANNEL_SAME_BITS = r"""
import hashlib, json
import ml_dtypes
import numpy as np
import lnorm
out, err, nan_ok = {}, {}, {}


def with_bits(v, at):  # float32 copy of v with the given bit patterns at the given channels
    v = v.astype(np.float32)
    for c, bits in at.items():
        v.view(np.uint32)[c] = bits
    return v
rng = np.random.default_rng(20261207)


def ref_norm(x, axes, w, b, eps=1e-5):
    x = x.astype(np.float64)
    m = x.mean(axes, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(axes, keepdims=True) + eps) * w + b


for dtype, n, C, G in (("float32", 2, 100, 20), ("float32", 2, 104, 8), ("bfloat16", 4, 100, 20), ("bfloat16", 4, 96, 8)):
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    H, W = 200, 220
    base = (rng.standard_normal((n, C, H, W)) * 2 + 3).astype(dt)
    dy0 = rng.standard_normal((n, C, H, W)).astype(dt)
    w = (rng.standard_normal(C) * 0.5 + 1).astype(dt)
    b = rng.standard_normal(C).astype(dt)
    rm, rv = rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.5).astype(np.float32)
    poisoned = base.copy()
    poisoned[0, 5, 10, 20], poisoned[1, 40, 3, 3] = np.nan, np.inf
    wn = with_bits(w, {3: 0xFFFFFFFF, 7: 0x7FC01234, 51: 0x7F800001})
    bn = with_bits(b, {11: 0xFFBFFFFF, 60: 0x7FFFFFFF})
    rmn, rvn = with_bits(rm, {5: 0xFFFFFFFF}), with_bits(rv, {9: 0x7FFFFFFF, 70: 0xFF800001})
    for layout in ("nchw", "nhwc"):
        x = base if layout == "nchw" else np.ascontiguousarray(base.transpose(0, 2, 3, 1))
        xn = poisoned if layout == "nchw" else np.ascontiguousarray(poisoned.transpose(0, 2, 3, 1))
        dy = dy0 if layout == "nchw" else np.ascontiguousarray(dy0.transpose(0, 2, 3, 1))
        ax = 1 if layout == "nchw" else 3
        cshape = [1, 1, 1, 1]
        cshape[ax] = C
        wf, bf = w.astype(np.float64).reshape(cshape), b.astype(np.float64).reshape(cshape)
        for shifted in (0, 1):
            y = np.empty(x.size + shifted, dt)[shifted:].reshape(x.shape)
            for threads in (1, 2):
                lnorm.set_num_threads(threads)
                h = hashlib.sha256()
                _, mean, rstd = lnorm.group_norm(x, G, w, b, channel_axis=ax, out=y, return_stats=True)
                h.update(y.tobytes())
                if threads == 1:
                    xg = x.astype(np.float64).reshape(n, G, C // G, H, W) if layout == "nchw" else \
                        x.astype(np.float64).reshape(n, H, W, G, C // G)
                    axes = (2, 3, 4) if layout == "nchw" else (1, 2, 4)
                    ref = ref_norm(xg, axes, 1.0, 0.0).reshape(x.shape) * wf + bf
                    err[f"group_norm {dtype} {C} {layout} {shifted}"] = float((np.abs(y.astype(np.float64) - ref) / (1 + np.abs(ref))).max())
                lnorm.batch_norm(x, rm, rv, w, b, channel_axis=ax, out=y)
                h.update(y.tobytes())
                if threads == 1:
                    ref = (x.astype(np.float64) - rm.reshape(cshape)) / np.sqrt(rv.reshape(cshape) + 1e-5) * wf + bf
                    err[f"batch_norm eval {dtype} {C} {layout} {shifted}"] = float((np.abs(y.astype(np.float64) - ref) / (1 + np.abs(ref))).max())
                m2, v2 = rm.copy(), rv.copy()
                lnorm.batch_norm(x, m2, v2, w, b, channel_axis=ax, training=True, out=y)
                h.update(y.tobytes()); h.update(m2.tobytes()); h.update(v2.tobytes())
                lnorm.instance_norm(x, w, b, channel_axis=ax, out=y, activation="silu")
                h.update(y.tobytes())
                dx, dw, db = lnorm.group_norm_backward(dy, x, mean, rstd, w, num_groups=G, channel_axis=ax)
                h.update(dx.tobytes()); h.update(np.asarray(dw).tobytes()); h.update(np.asarray(db).tobytes())
                if dtype == "bfloat16":  # NaN and Inf; checked against the reference at 1 thread
                    if threads == 1:
                        wnf, bnf = wn.astype(np.float64).reshape(cshape), bn.astype(np.float64).reshape(cshape)
                        xg = xn.astype(np.float64).reshape(n, G, C // G, H, W) if layout == "nchw" else \
                            xn.astype(np.float64).reshape(n, H, W, G, C // G)
                    for name in ("group_norm", "batch_norm eval"):
                        if name == "group_norm":
                            _, mn, rn = lnorm.group_norm(xn, G, wn, bn, channel_axis=ax, out=y, return_stats=True)
                        else:
                            lnorm.batch_norm(xn, rmn, rvn, wn, bn, channel_axis=ax, out=y)
                        h.update(y.tobytes())
                        if threads == 2:  # the same bits as 1 thread: checked by the digests
                            continue
                        ref = ref_norm(xg, axes, 1.0, 0.0).reshape(x.shape) * wnf + bnf if name == "group_norm" else \
                            (xn.astype(np.float64) - rmn.reshape(cshape)) / np.sqrt(rvn.astype(np.float64).reshape(cshape) + 1e-5) * wnf + bnf
                        yf = y.astype(np.float64)
                        key = f"{name} NaN {dtype} {C} {layout} {shifted}"
                        fine, inf = np.isfinite(ref), np.isinf(ref)
                        nan_ok[key] = bool((np.isnan(yf) == np.isnan(ref)).all() and (yf[inf] == ref[inf]).all())
                        err[key] = float((np.abs(yf[fine] - ref[fine]) / (1 + np.abs(ref[fine]))).max())
                    dx = lnorm.group_norm_backward(dy, xn, mn, rn, wn, num_groups=G, channel_axis=ax)[0]
                    h.update(dx.tobytes())
                    if threads == 1:
                        # NaN in every group whose x holds a NaN or Inf or whose channels a NaN weight
                        # (its q and r sum over the group's channels), nowhere else
                        bad = ~np.isfinite(xg).all(axis=axes) | np.isnan(wn).reshape(G, C // G).any(1)
                        gshape = (n, G, 1, 1, 1) if layout == "nchw" else (n, 1, 1, G, 1)
                        want = np.broadcast_to(bad.reshape(gshape), xg.shape).reshape(x.shape)
                        nan_ok[f"group_norm_backward NaN {dtype} {C} {layout} {shifted}"] = \
                            bool((np.isnan(dx.astype(np.float64)) == want).all())
                out[f"{dtype}/{C}/{layout}/{shifted}/{threads}"] = h.hexdigest()
print(json.dumps([out, err, lnorm.config()["policy"]["stream_min_bytes"], nan_ok]))
"""


@pytest.mark.slow
def test_policy_never_changes_channel_norm_results():
    policies = ({"LNORM_STORES": "plain", "LNORM_PREFETCH": "0"}, {"LNORM_STORES": "streaming", "LNORM_PREFETCH": "4096"},
                {"LNORM_STORES": "streaming", "LNORM_PREFETCH": "0"}, {})
    runs = [json.loads(_run(env, _CHANNEL_SAME_BITS).stdout) for env in policies]
    assert 2 * 100 * 200 * 220 * 4 >= runs[0][2], "the outputs must be over the streaming threshold"
    for digests, _, _, nan_ok in runs:
        assert digests == runs[0][0]
        assert nan_ok and all(nan_ok.values()), nan_ok
    for key, digest in runs[0][0].items():
        assert digest == runs[0][0][key[:-1] + "1"], key  # 2 threads as 1
    for key, e in runs[0][1].items():
        assert e < (1e-5 if "float32" in key else 1e-2), (key, e)  # relative to 1 + |reference|


_SETS_RUN = r"""
import json
import numpy as np
import lnorm
from lnorm import _lnorm
x = np.random.default_rng(5).standard_normal((64, 1000))
ran = {}
for name, dt in (("float32", np.float32), ("float16", np.float16), ("float64", np.float64)):
    lnorm.layer_norm(x.astype(dt))
    ran[name] = _lnorm.last_call()[0]
lnorm.rms_norm(x.astype(np.float32))
ran["rms float32"] = _lnorm.last_call()[0]
lnorm.add_layer_norm(x.astype(np.float32), x.astype(np.float32))  # y is the norm of s, bit for bit
ran["add float32"] = _lnorm.last_call()[0]
lnorm.layer_norm(x.astype(np.float32), axis=0)  # columns: the same set, so any strides give the same bits
ran["columns float32"] = _lnorm.last_call()[0]
xs, dys = x.astype(np.float32), x[::-1].copy().astype(np.float32)
_, m, r = lnorm.layer_norm(xs, return_stats=True)
lnorm.layer_norm_backward(dys, xs, m, r)
ran["backward float32"] = _lnorm.last_call()[0]
print(json.dumps([ran, lnorm.config()["isa"], lnorm.config()["policy"]["avx2_ops"]]))
"""


def test_policy_per_op_kernel_sets():
    # A chosen AVX-512 set gives the float32 forward norms (every layout, add & norm too) to AVX2 where
    # the policy says so, and only those; a forced set runs everything.
    ran, best, narrow = json.loads(_run({}, _SETS_RUN).stdout)
    to_avx2 = best == "avx512" and "forward_float32" in narrow and "avx2" in lnorm.available_isas()
    f32 = "avx2" if to_avx2 else best
    assert ran == {"float32": f32, "rms float32": f32, "add float32": f32, "float16": best, "float64": best,
                   "columns float32": f32, "backward float32": best}, (ran, best, narrow)
    for isa in lnorm.available_isas():
        forced, active, _ = json.loads(_run({"LNORM_ISA": isa}, _SETS_RUN).stdout)
        assert active == isa and set(forced.values()) == {isa}, (isa, forced)


_AUTO_RUN = r"""
import json, warnings
warnings.simplefilter("error")  # LNORM_ISA=auto is a valid value: no warning
import numpy as np
import lnorm
from lnorm import _lnorm
x = np.random.default_rng(6).standard_normal((64, 1000)).astype(np.float32)
steps = [lnorm.config()["isa_forced"]]
lnorm.set_isa("scalar")
lnorm.layer_norm(x)
steps += [lnorm.config()["isa_forced"], _lnorm.last_call()[0]]
lnorm.set_isa("auto")
lnorm.layer_norm(x)
steps += [lnorm.config()["isa_forced"], lnorm.config()["isa"], _lnorm.last_call()[0]]
print(json.dumps(steps))
"""


@pytest.mark.parametrize("env", [{}, {"LNORM_ISA": "auto"}])
def test_set_isa_auto_goes_back_to_the_cpu_choice(env):
    first, forced, ran_forced, after, active, ran = json.loads(_run(env, _AUTO_RUN).stdout)
    best = lnorm.available_isas()[-1]
    narrow = "forward_float32" in lnorm.config()["policy"]["avx2_ops"] and best == "avx512"
    assert (first, forced, ran_forced) == (False, True, "scalar")
    assert (after, active, ran) == (False, best, "avx2" if narrow else best)
