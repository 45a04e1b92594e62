"""lnorm's channel norms against ONNX's own semantics: onnx.reference.ReferenceEvaluator running
GroupNormalization-21, InstanceNormalization-6 and BatchNormalization-15 (eval and training mode),
the ONNX node test cases of those operators, and PyTorch-exported BatchNorm models shipped with onnx.

ONNX BatchNormalization in training mode (training_mode=1) and lnorm's (torch's) convention:

    ONNX:  running_mean' = running_mean * m + mean_b * (1 - m)                   (default m = 0.9)
           running_var'  = running_var  * m + var_b  * (1 - m)
           Y = (X - mean_b) / sqrt(var_b + epsilon) * scale + B
    lnorm: running_mean' = (1 - momentum) * running_mean + momentum * mean_b      (default 0.1)
           running_var'  = (1 - momentum) * running_var  + momentum * var_b * n / (n - 1)

mean_b and var_b are the batch mean and the population (biased) variance per channel, over the
n = N * prod(spatial) values of the channel. So momentum = 1 - m, Y and running_mean agree, and the
running variances differ by the variance correction: onnx.reference's _batchnorm_training_mode uses
x.var() (biased) for both Y and the running variance, lnorm uses the unbiased one for the running
variance only:
    lnorm_running_var' = onnx_running_var' + (1 - m) * var_b / (n - 1)
                       = m * running_var + (1 - m) * var_b * n / (n - 1).
test_batch_norm_training_mode_against_onnx checks exactly this mapping, and that it is not zero.
"""

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import lnorm  # noqa: E402
from channel_reference import (batch_norm_train_ref, batch_var_ref, group_norm_ref,  # noqa: E402
                               instance_norm_ref)
from reference import assert_close  # noqa: E402

TOL32 = 2e-5
ONNX_DIR = os.path.dirname(onnx.__file__)
NODE_DATA = os.path.join(ONNX_DIR, "backend", "test", "data", "node")
PYTORCH_CONVERTED = os.path.join(ONNX_DIR, "backend", "test", "data", "pytorch-converted")
FLOAT = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def _model(op, inputs, outputs, opset, **attrs):
    """A one-node model; inputs/outputs are (name, dtype) pairs with unknown shapes."""
    node = helper.make_node(op, [n for n, _ in inputs], [n for n, _ in outputs], **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info(n, FLOAT[np.dtype(d)], None) for n, d in inputs],
        [helper.make_tensor_value_info(n, FLOAT[np.dtype(d)], None) for n, d in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def onnx_group_norm(x, num_groups, scale, bias, epsilon=1e-5):
    """GroupNormalization-21; its statistics in x's precision (stash_type: float32 is the
    default, double for float64 x)."""
    d = x.dtype
    m = _model("GroupNormalization", [("X", d), ("scale", d), ("bias", d)], [("Y", d)], 21,
               num_groups=num_groups, epsilon=epsilon,
               stash_type=TensorProto.DOUBLE if d == np.float64 else TensorProto.FLOAT)
    return ReferenceEvaluator(m).run(None, {"X": x, "scale": scale, "bias": bias})[0]


def onnx_instance_norm(x, scale, bias, epsilon=1e-5):
    d = x.dtype
    m = _model("InstanceNormalization", [("X", d), ("scale", d), ("B", d)], [("Y", d)], 6, epsilon=epsilon)
    return ReferenceEvaluator(m).run(None, {"X": x, "scale": scale, "B": bias})[0]


def onnx_batch_norm(x, scale, bias, mean, var, epsilon=1e-5, momentum=None, training_mode=0):
    d = x.dtype
    attrs = dict(epsilon=epsilon, training_mode=training_mode)
    if momentum is not None:
        attrs["momentum"] = momentum
    outs = [("Y", d)] + ([("running_mean", d), ("running_var", d)] if training_mode else [])
    m = _model("BatchNormalization", [("X", d), ("scale", d), ("B", d), ("input_mean", d), ("input_var", d)],
               outs, 15, **attrs)
    return ReferenceEvaluator(m).run(None, {"X": x, "scale": scale, "B": bias, "input_mean": mean,
                                            "input_var": var})


def _inputs(rng, shape, dtype=np.float32):
    c = shape[1]
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(dtype)
    scale = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    return x, scale, bias


SHAPES = [(2, 4, 3, 5), (3, 6, 7), (1, 8, 2, 3, 4), (4, 12, 1, 1), (2, 16, 17)]


# ----------------------------------------------------------------------------------------------
# The oracle against ONNX (independent of lnorm)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_oracle_matches_onnx_reference(shape):
    # epsilon is a float32 attribute: 2**-10 is exact in it (1e-3 would be off by 5e-11)
    eps = 2.0 ** -10
    rng = np.random.default_rng(len(shape) + shape[1])
    x, s, b = _inputs(rng, shape, np.float64)
    c = shape[1]
    for g in (1, 2, c):
        if c % g == 0:
            assert_close(group_norm_ref(x, g, s, b, 1, eps)[0], onnx_group_norm(x, g, s, b, eps), tol=1e-12)
    assert_close(instance_norm_ref(x, s, b, 1, eps)[0], onnx_instance_norm(x, s, b, eps), tol=1e-12)
    y, rm, rv = onnx_batch_norm(x, s, b, np.zeros(c), np.ones(c), eps, 0.75, 1)  # momentum: float32 too
    assert_close(batch_norm_train_ref(x, s, b, 1, eps)[0], y, tol=1e-12)
    var_b, _ = batch_var_ref(x)
    assert_close(rv, 0.75 + 0.25 * var_b, tol=1e-12)  # ONNX's running variance: the biased one


# ----------------------------------------------------------------------------------------------
# lnorm against ONNX: random cases


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_group_and_instance_norm_against_onnx(shape, eps):
    rng = np.random.default_rng([len(shape), shape[1], int(eps * 100)])
    x, s, b = _inputs(rng, shape)
    c = shape[1]
    for g in sorted({1, 2, 4, c}):
        if c % g == 0:
            want = onnx_group_norm(x, g, s, b, eps)
            assert_close(lnorm.group_norm(x, g, s, b, eps=eps), want, tol=TOL32, what=f"group_norm G={g}")
            # NHWC: the same numbers with the channel axis last
            y = lnorm.group_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), g, s, b, channel_axis=-1, eps=eps)
            assert_close(np.moveaxis(y, -1, 1), want, tol=TOL32, what=f"group_norm NHWC G={g}")
    want = onnx_instance_norm(x, s, b, eps)
    assert_close(lnorm.instance_norm(x, s, b, eps=eps), want, tol=TOL32, what="instance_norm")
    y = lnorm.instance_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), s, b, channel_axis=-1, eps=eps)
    assert_close(np.moveaxis(y, -1, 1), want, tol=TOL32, what="instance_norm NHWC")


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_eval_against_onnx(shape, eps):
    rng = np.random.default_rng([len(shape), shape[1], 3])
    x, s, b = _inputs(rng, shape)
    c = shape[1]
    mean = rng.standard_normal(c).astype(np.float32)
    var = rng.uniform(0.2, 2.0, c).astype(np.float32)
    (want,) = onnx_batch_norm(x, s, b, mean, var, eps)
    assert_close(lnorm.batch_norm(x, mean, var, s, b, eps=eps), want, tol=TOL32, what="eval")
    assert_close(lnorm.batch_norm(x, mean, var, s, b, eps=eps, training=False), want, tol=TOL32, what="eval")
    y = lnorm.batch_norm(np.ascontiguousarray(np.moveaxis(x, 1, -1)), mean, var, s, b, eps=eps, channel_axis=-1)
    assert_close(np.moveaxis(y, -1, 1), want, tol=TOL32, what="eval NHWC")


@pytest.mark.parametrize("onnx_momentum", [None, 0.9, 0.5, 0.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_training_mode_against_onnx(shape, onnx_momentum):
    """training_mode=1: Y and the running mean equal ONNX's with lnorm momentum = 1 - ONNX momentum
    (ONNX default 0.9); the running variance is ONNX's plus (1 - m) * var_b / (n - 1), lnorm keeping
    the unbiased batch variance as torch does (see the module docstring)."""
    rng = np.random.default_rng([len(shape), shape[1], 4])
    x, s, b = _inputs(rng, shape)
    c = shape[1]
    n = x.size // c
    if n < 2:
        pytest.skip("one value per channel")
    m = 0.9 if onnx_momentum is None else onnx_momentum
    rm0 = rng.standard_normal(c).astype(np.float32)
    rv0 = rng.uniform(0.2, 2.0, c).astype(np.float32)
    y_onnx, rm_onnx, rv_onnx = onnx_batch_norm(x, s, b, rm0, rv0, 1e-5, onnx_momentum, 1)
    rm, rv = rm0.copy(), rv0.copy()
    y = lnorm.batch_norm(x, rm, rv, s, b, training=True, momentum=1 - m, eps=1e-5)
    assert_close(y, y_onnx, tol=TOL32, what="Y")
    assert_close(rm, rm_onnx, tol=TOL32, scale=4.0, what="running_mean")
    # the mapping of the variances, from ONNX's own numbers: var_b recovered from its output
    var_b = batch_var_ref(x)[0]
    assert_close(rv_onnx, m * rv0.astype(np.float64) + (1 - m) * var_b, tol=TOL32, what="ONNX running_var is biased")
    expect = rv_onnx.astype(np.float64) + (1 - m) * var_b / (n - 1)
    assert_close(rv, expect, tol=TOL32, what="running_var = ONNX's + (1 - m) var_b / (n - 1)")
    assert_close(rv, m * rv0.astype(np.float64) + (1 - m) * var_b * n / (n - 1), tol=TOL32)
    if m < 1 and n < 100:  # the correction is visible: lnorm does not keep ONNX's biased variance
        assert np.abs(rv - rv_onnx).max() > 100 * TOL32 * np.abs(rv_onnx).max()


# ----------------------------------------------------------------------------------------------
# ONNX's node test cases and the PyTorch-exported BatchNorm models shipped with onnx


def _node_cases(op_module, cls_name):
    """The node test cases of one operator as ONNX's generator builds them (inputs, outputs and the
    node with its attributes), seeded; from the stored protobufs where the package has them."""
    import importlib
    mod = importlib.import_module(f"onnx.backend.test.case.node.{op_module}")
    cases = []
    orig = mod.expect

    def record(node, inputs, outputs, name, **kwargs):
        cases.append((name, node, [np.asarray(a) for a in inputs], [np.asarray(a) for a in outputs]))

    np.random.seed(0)
    mod.expect = record
    try:
        cls = getattr(mod, cls_name)
        for attr in sorted(dir(cls)):
            if attr.startswith("export"):
                getattr(cls, attr)()
    finally:
        mod.expect = orig
    return cases


def _stored_node_cases(prefix):
    """(name, inputs, outputs) from onnx/backend/test/data/node/<prefix>*/test_data_set_0, where
    the installed package ships them (many wheels do not)."""
    if not os.path.isdir(NODE_DATA):
        return []
    out = []
    for d in sorted(os.listdir(NODE_DATA)):
        if not d.startswith(prefix) or "expanded" in d:
            continue
        model = onnx.load(os.path.join(NODE_DATA, d, "model.onnx"))
        ds = os.path.join(NODE_DATA, d, "test_data_set_0")
        load = lambda f: numpy_helper.to_array(onnx.load_tensor(os.path.join(ds, f)))  # noqa: E731
        ins = [load(f) for f in sorted(os.listdir(ds)) if f.startswith("input")]
        outs = [load(f) for f in sorted(os.listdir(ds)) if f.startswith("output")]
        out.append((d, model.graph.node[0], ins, outs))
    return out


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _run_lnorm(node, ins):
    op = node.op_type
    eps = _attr(node, "epsilon", 1e-5)
    if op == "GroupNormalization":
        x, s, b = ins
        return [lnorm.group_norm(x, _attr(node, "num_groups", None), s, b, eps=eps)]
    if op == "InstanceNormalization":
        x, s, b = ins
        return [lnorm.instance_norm(x, s, b, eps=eps)]
    assert op == "BatchNormalization"
    x, s, b, mean, var = ins
    if not _attr(node, "training_mode", 0):
        return [lnorm.batch_norm(x, mean, var, s, b, eps=eps)]
    m = _attr(node, "momentum", 0.9)
    rm, rv = mean.copy(), var.copy()
    y = lnorm.batch_norm(x, rm, rv, s, b, training=True, momentum=1 - m, eps=eps)
    n = x.size // x.shape[1]
    var_b = batch_var_ref(x)[0]
    # back to ONNX's biased running variance (see the module docstring)
    return [y, rm, (rv.astype(np.float64) - (1 - m) * var_b / (n - 1))]


NODE_OPS = [("groupnormalization", "GroupNormalization", "test_group_normalization"),
            ("instance_normalization", "InstanceNormalization", "test_instancenorm"),
            ("batch_normalization", "BatchNormalization", "test_batchnorm")]


@pytest.mark.parametrize("module,cls,prefix", NODE_OPS, ids=[c for _, c, _ in NODE_OPS])
def test_onnx_node_cases(module, cls, prefix):
    cases = _node_cases(module, cls) + _stored_node_cases(prefix)
    assert len(cases) >= 2, f"no node test cases for {cls}"
    for name, node, ins, outs in cases:
        got = _run_lnorm(node, ins)
        assert len(got) == len(outs), name
        for i, (g, w) in enumerate(zip(got, outs)):
            assert_close(g, w, tol=TOL32, what=f"{name} output {i}")
        # and ONNX's reference evaluator agrees with the stored outputs (the case is what we think)
        model = helper.make_model(helper.make_graph(
            [node], name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.input],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output]),
            opset_imports=[helper.make_opsetid("", 21 if cls == "GroupNormalization" else 15)])
        ref = ReferenceEvaluator(model).run(None, dict(zip(node.input, ins)))
        for g, w in zip(ref, outs):
            assert_close(g, w, tol=TOL32, what=f"{name} ONNX reference")


def test_pytorch_converted_batch_norm_models():
    """onnx ships BatchNorm1d/2d/3d models exported from PyTorch in eval mode (opset 6, is_test=1),
    with an input and the output PyTorch computed: lnorm in eval mode on the model's initializers."""
    if not os.path.isdir(PYTORCH_CONVERTED):
        pytest.skip("this onnx package has no pytorch-converted test data")
    dirs = [d for d in sorted(os.listdir(PYTORCH_CONVERTED)) if d.startswith("test_BatchNorm")]
    if not dirs:
        pytest.skip("no BatchNorm models in this onnx package")
    for d in dirs:
        model = onnx.load(os.path.join(PYTORCH_CONVERTED, d, "model.onnx"))
        (node,) = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
        init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        ds = os.path.join(PYTORCH_CONVERTED, d, "test_data_set_0")
        x = numpy_helper.to_array(onnx.load_tensor(os.path.join(ds, "input_0.pb")))
        want = numpy_helper.to_array(onnx.load_tensor(os.path.join(ds, "output_0.pb")))
        s, b, mean, var = (init[n] for n in node.input[1:5])
        y = lnorm.batch_norm(x, mean, var, s, b, eps=_attr(node, "epsilon", 1e-5))
        assert_close(y, want, tol=1e-4, what=d)
