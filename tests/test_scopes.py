"""Key scopes on the real key names of each architecture (written out here from the libraries'
naming, layer 0 only, small shapes), the warnings when a scope misses a model's layers, GPT-2's
transposed Conv1D matrices under FR's filters, and ``freqmerge-viz inspect``'s scope columns."""

import json
import warnings

import pytest
import torch

import freqmerge_viz as fmv
from freqmerge_viz.cli import main
from freqmerge_viz.errors import ParameterError, ScopeWarning
from freqmerge_viz.scopes import ARCHITECTURES, detect_architecture, scope_parts, select, selects
from freqmerge_viz.spectral import FilterSpec, apply_filter

D, F, V, P = 8, 32, 50, 17  # width, MLP width, vocabulary, positions

OPEN_CLIP = {  # open_clip ViT visual tower and text tower
    "visual.class_embedding": (D,), "visual.positional_embedding": (P, D), "visual.proj": (D, 4),
    "visual.conv1.weight": (D, 3, 4, 4), "visual.ln_pre.weight": (D,), "visual.ln_pre.bias": (D,),
    "visual.transformer.resblocks.0.ln_1.weight": (D,), "visual.transformer.resblocks.0.ln_1.bias": (D,),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (3 * D, D),
    "visual.transformer.resblocks.0.attn.in_proj_bias": (3 * D,),
    "visual.transformer.resblocks.0.attn.out_proj.weight": (D, D),
    "visual.transformer.resblocks.0.attn.out_proj.bias": (D,),
    "visual.transformer.resblocks.0.ln_2.weight": (D,), "visual.transformer.resblocks.0.ln_2.bias": (D,),
    "visual.transformer.resblocks.0.mlp.c_fc.weight": (F, D), "visual.transformer.resblocks.0.mlp.c_fc.bias": (F,),
    "visual.transformer.resblocks.0.mlp.c_proj.weight": (D, F), "visual.transformer.resblocks.0.mlp.c_proj.bias": (D,),
    "visual.ln_post.weight": (D,), "visual.ln_post.bias": (D,),
    "token_embedding.weight": (V, D), "positional_embedding": (P, D), "text_projection": (D, 4), "logit_scale": (),
    "transformer.resblocks.0.attn.in_proj_weight": (3 * D, D), "transformer.resblocks.0.attn.in_proj_bias": (3 * D,),
    "transformer.resblocks.0.attn.out_proj.weight": (D, D), "transformer.resblocks.0.mlp.c_fc.weight": (F, D),
    "transformer.resblocks.0.mlp.c_proj.weight": (D, F), "ln_final.weight": (D,), "ln_final.bias": (D,),
}
TIMM_VIT = {  # timm VisionTransformer (the demo zoo's layout)
    "cls_token": (1, 1, D), "pos_embed": (1, P, D), "patch_embed.proj.weight": (D, 3, 4, 4),
    "patch_embed.proj.bias": (D,), "blocks.0.norm1.weight": (D,), "blocks.0.norm1.bias": (D,),
    "blocks.0.attn.qkv.weight": (3 * D, D), "blocks.0.attn.qkv.bias": (3 * D,),
    "blocks.0.attn.proj.weight": (D, D), "blocks.0.attn.proj.bias": (D,),
    "blocks.0.norm2.weight": (D,), "blocks.0.norm2.bias": (D,),
    "blocks.0.mlp.fc1.weight": (F, D), "blocks.0.mlp.fc1.bias": (F,),
    "blocks.0.mlp.fc2.weight": (D, F), "blocks.0.mlp.fc2.bias": (D,),
    "norm.weight": (D,), "norm.bias": (D,), "head.weight": (10, D), "head.bias": (10,),
}
HF_CLIP = {  # transformers CLIPModel
    "vision_model.embeddings.class_embedding": (D,), "vision_model.embeddings.patch_embedding.weight": (D, 3, 4, 4),
    "vision_model.embeddings.position_embedding.weight": (P, D), "vision_model.embeddings.position_ids": (1, P),
    "vision_model.pre_layrnorm.weight": (D,), "vision_model.pre_layrnorm.bias": (D,),
    **{f"vision_model.encoder.layers.0.self_attn.{m}_proj.{p}": (D, D) if p == "weight" else (D,)
       for m in ("k", "v", "q", "out") for p in ("weight", "bias")},
    "vision_model.encoder.layers.0.layer_norm1.weight": (D,), "vision_model.encoder.layers.0.layer_norm1.bias": (D,),
    "vision_model.encoder.layers.0.mlp.fc1.weight": (F, D), "vision_model.encoder.layers.0.mlp.fc1.bias": (F,),
    "vision_model.encoder.layers.0.mlp.fc2.weight": (D, F), "vision_model.encoder.layers.0.mlp.fc2.bias": (D,),
    "vision_model.encoder.layers.0.layer_norm2.weight": (D,), "vision_model.post_layernorm.weight": (D,),
    "visual_projection.weight": (4, D), "text_model.embeddings.token_embedding.weight": (V, D),
    "text_model.embeddings.position_embedding.weight": (P, D),
    "text_model.encoder.layers.0.self_attn.q_proj.weight": (D, D),
    "text_model.encoder.layers.0.self_attn.out_proj.weight": (D, D),
    "text_model.encoder.layers.0.mlp.fc1.weight": (F, D), "text_model.final_layer_norm.weight": (D,),
    "text_projection.weight": (4, D), "logit_scale": (),
}
HF_VIT = {  # transformers ViTForImageClassification
    "vit.embeddings.cls_token": (1, 1, D), "vit.embeddings.position_embeddings": (1, P, D),
    "vit.embeddings.patch_embeddings.projection.weight": (D, 3, 4, 4),
    "vit.embeddings.patch_embeddings.projection.bias": (D,),
    **{f"vit.encoder.layer.0.attention.attention.{m}.{p}": (D, D) if p == "weight" else (D,)
       for m in ("query", "key", "value") for p in ("weight", "bias")},
    "vit.encoder.layer.0.attention.output.dense.weight": (D, D), "vit.encoder.layer.0.attention.output.dense.bias": (D,),
    "vit.encoder.layer.0.intermediate.dense.weight": (F, D), "vit.encoder.layer.0.intermediate.dense.bias": (F,),
    "vit.encoder.layer.0.output.dense.weight": (D, F), "vit.encoder.layer.0.output.dense.bias": (D,),
    "vit.encoder.layer.0.layernorm_before.weight": (D,), "vit.encoder.layer.0.layernorm_after.weight": (D,),
    "vit.layernorm.weight": (D,), "vit.layernorm.bias": (D,), "classifier.weight": (10, D), "classifier.bias": (10,),
}
BERT = {  # transformers BertForSequenceClassification
    "bert.embeddings.word_embeddings.weight": (V, D), "bert.embeddings.position_embeddings.weight": (P, D),
    "bert.embeddings.token_type_embeddings.weight": (2, D), "bert.embeddings.LayerNorm.weight": (D,),
    "bert.embeddings.LayerNorm.bias": (D,),
    **{f"bert.encoder.layer.0.attention.self.{m}.weight": (D, D) for m in ("query", "key", "value")},
    "bert.encoder.layer.0.attention.self.query.bias": (D,),
    "bert.encoder.layer.0.attention.output.dense.weight": (D, D),
    "bert.encoder.layer.0.attention.output.LayerNorm.weight": (D,),
    "bert.encoder.layer.0.intermediate.dense.weight": (F, D), "bert.encoder.layer.0.output.dense.weight": (D, F),
    "bert.encoder.layer.0.output.dense.bias": (D,), "bert.encoder.layer.0.output.LayerNorm.weight": (D,),
    "bert.pooler.dense.weight": (D, D), "bert.pooler.dense.bias": (D,),
    "classifier.weight": (2, D), "classifier.bias": (2,),
}
ROBERTA = {  # transformers RobertaForSequenceClassification (its head: classifier.dense, classifier.out_proj)
    "roberta.embeddings.word_embeddings.weight": (V, D), "roberta.embeddings.position_embeddings.weight": (P, D),
    **{f"roberta.encoder.layer.0.attention.self.{m}.weight": (D, D) for m in ("query", "key", "value")},
    "roberta.encoder.layer.0.attention.output.dense.weight": (D, D),
    "roberta.encoder.layer.0.intermediate.dense.weight": (F, D), "roberta.encoder.layer.0.output.dense.weight": (D, F),
    "classifier.dense.weight": (D, D), "classifier.out_proj.weight": (2, D),
}
GPT2 = {  # transformers GPT2LMHeadModel; Conv1D weights are in × out
    "transformer.wte.weight": (V, D), "transformer.wpe.weight": (P, D),
    "transformer.h.0.ln_1.weight": (D,), "transformer.h.0.ln_1.bias": (D,),
    "transformer.h.0.attn.bias": (1, 1, P, P), "transformer.h.0.attn.masked_bias": (),  # buffers of older files
    "transformer.h.0.attn.c_attn.weight": (D, 3 * D), "transformer.h.0.attn.c_attn.bias": (3 * D,),
    "transformer.h.0.attn.c_proj.weight": (D, D), "transformer.h.0.attn.c_proj.bias": (D,),
    "transformer.h.0.ln_2.weight": (D,), "transformer.h.0.mlp.c_fc.weight": (D, F), "transformer.h.0.mlp.c_fc.bias": (F,),
    "transformer.h.0.mlp.c_proj.weight": (F, D), "transformer.h.0.mlp.c_proj.bias": (D,),
    "transformer.ln_f.weight": (D,), "transformer.ln_f.bias": (D,), "lm_head.weight": (V, D),
}
LLAMA = {  # transformers LlamaForCausalLM (Mistral: the same names; Qwen2 adds q/k/v biases)
    "model.embed_tokens.weight": (V, D),
    **{f"model.layers.0.self_attn.{m}_proj.weight": (D, D) for m in ("q", "k", "v", "o")},
    "model.layers.0.self_attn.q_proj.bias": (D,), "model.layers.0.self_attn.rotary_emb.inv_freq": (D // 2,),
    **{f"model.layers.0.mlp.{m}_proj.weight": (F, D) if m != "down" else (D, F) for m in ("gate", "up", "down")},
    "model.layers.0.input_layernorm.weight": (D,), "model.layers.0.post_attention_layernorm.weight": (D,),
    "model.norm.weight": (D,), "lm_head.weight": (V, D),
}
T5 = {  # transformers T5ForConditionalGeneration (t5 v1.0: wi; v1.1: wi_0, wi_1)
    "shared.weight": (V, D), "encoder.embed_tokens.weight": (V, D), "decoder.embed_tokens.weight": (V, D),
    **{f"encoder.block.0.layer.0.SelfAttention.{m}.weight": (D, D) for m in "qkvo"},
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
    "encoder.block.0.layer.0.layer_norm.weight": (D,),
    "encoder.block.0.layer.1.DenseReluDense.wi.weight": (F, D), "encoder.block.0.layer.1.DenseReluDense.wo.weight": (D, F),
    "encoder.block.0.layer.1.layer_norm.weight": (D,), "encoder.final_layer_norm.weight": (D,),
    **{f"decoder.block.0.layer.0.SelfAttention.{m}.weight": (D, D) for m in "qkvo"},
    "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, 2),
    **{f"decoder.block.0.layer.1.EncDecAttention.{m}.weight": (D, D) for m in "qkvo"},
    "decoder.block.0.layer.2.DenseReluDense.wi_0.weight": (F, D),
    "decoder.block.0.layer.2.DenseReluDense.wi_1.weight": (F, D),
    "decoder.block.0.layer.2.DenseReluDense.wo.weight": (D, F), "decoder.final_layer_norm.weight": (D,),
    "lm_head.weight": (V, D),
}
DINOV2 = {  # transformers Dinov2Model: HF ViT attention names, but mlp.fc1 / mlp.fc2
    "embeddings.cls_token": (1, 1, D), "embeddings.mask_token": (1, D), "embeddings.position_embeddings": (1, P, D),
    "embeddings.patch_embeddings.projection.weight": (D, 3, 4, 4),
    **{f"encoder.layer.0.attention.attention.{m}.weight": (D, D) for m in ("query", "key", "value")},
    "encoder.layer.0.attention.output.dense.weight": (D, D), "encoder.layer.0.layer_scale1.lambda1": (D,),
    "encoder.layer.0.mlp.fc1.weight": (F, D), "encoder.layer.0.mlp.fc2.weight": (D, F),
    "encoder.layer.0.norm1.weight": (D,), "layernorm.weight": (D,),
}

# (key list, architecture, attention matrices, MLP matrices, embeddings); layer_matrices = attention + MLP
CASES = {
    "open_clip": (OPEN_CLIP, "open_clip",
                  [f"{t}transformer.resblocks.0.attn.{m}" for t in ("visual.", "") for m in ("in_proj_weight",
                                                                                            "out_proj.weight")],
                  [f"{t}transformer.resblocks.0.mlp.{m}.weight" for t in ("visual.", "") for m in ("c_fc", "c_proj")],
                  ["visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight",
                   "token_embedding.weight", "positional_embedding"]),
    "timm_vit": (TIMM_VIT, "timm_vit", ["blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"],
                 ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"],
                 ["cls_token", "pos_embed", "patch_embed.proj.weight"]),
    "hf_clip": (HF_CLIP, "hf_clip",
                [f"vision_model.encoder.layers.0.self_attn.{m}_proj.weight" for m in ("k", "v", "q", "out")]
                + ["text_model.encoder.layers.0.self_attn.q_proj.weight",
                   "text_model.encoder.layers.0.self_attn.out_proj.weight"],
                ["vision_model.encoder.layers.0.mlp.fc1.weight", "vision_model.encoder.layers.0.mlp.fc2.weight",
                 "text_model.encoder.layers.0.mlp.fc1.weight"],
                ["vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
                 "vision_model.embeddings.position_embedding.weight", "text_model.embeddings.token_embedding.weight",
                 "text_model.embeddings.position_embedding.weight"]),
    "hf_vit": (HF_VIT, "hf_vit",
               [f"vit.encoder.layer.0.attention.attention.{m}.weight" for m in ("query", "key", "value")]
               + ["vit.encoder.layer.0.attention.output.dense.weight"],
               ["vit.encoder.layer.0.intermediate.dense.weight", "vit.encoder.layer.0.output.dense.weight"],
               ["vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
                "vit.embeddings.patch_embeddings.projection.weight"]),
    "bert": (BERT, "bert",
             [f"bert.encoder.layer.0.attention.self.{m}.weight" for m in ("query", "key", "value")]
             + ["bert.encoder.layer.0.attention.output.dense.weight"],
             ["bert.encoder.layer.0.intermediate.dense.weight", "bert.encoder.layer.0.output.dense.weight"],
             ["bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
              "bert.embeddings.token_type_embeddings.weight"]),
    "roberta": (ROBERTA, "bert",
                [f"roberta.encoder.layer.0.attention.self.{m}.weight" for m in ("query", "key", "value")]
                + ["roberta.encoder.layer.0.attention.output.dense.weight"],
                ["roberta.encoder.layer.0.intermediate.dense.weight", "roberta.encoder.layer.0.output.dense.weight"],
                ["roberta.embeddings.word_embeddings.weight", "roberta.embeddings.position_embeddings.weight"]),
    "gpt2": (GPT2, "gpt2", ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight"],
             ["transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"],
             ["transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"]),
    "llama": (LLAMA, "llama", [f"model.layers.0.self_attn.{m}_proj.weight" for m in ("q", "k", "v", "o")],
              [f"model.layers.0.mlp.{m}_proj.weight" for m in ("gate", "up", "down")],
              ["model.embed_tokens.weight", "lm_head.weight"]),
    "t5": (T5, "t5",
           [f"encoder.block.0.layer.0.SelfAttention.{m}.weight" for m in "qkvo"]
           + [f"decoder.block.0.layer.0.SelfAttention.{m}.weight" for m in "qkvo"]
           + [f"decoder.block.0.layer.1.EncDecAttention.{m}.weight" for m in "qkvo"],
           ["encoder.block.0.layer.1.DenseReluDense.wi.weight", "encoder.block.0.layer.1.DenseReluDense.wo.weight"]
           + [f"decoder.block.0.layer.2.DenseReluDense.{m}.weight" for m in ("wi_0", "wi_1", "wo")],
           ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "lm_head.weight"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scopes_on_each_architecture(case):
    shapes, arch, attention, mlp, embeddings = CASES[case]
    assert detect_architecture(shapes).name == arch
    assert select("attention", shapes) == [k for k in shapes if k in attention]
    assert select("mlp", shapes) == [k for k in shapes if k in mlp]
    assert set(select("layer_matrices", shapes)) == set(attention) | set(mlp)
    assert set(select("embeddings", shapes)) == set(embeddings)
    assert select("all_matrices", shapes) == [k for k, s in shapes.items() if len(s) >= 2]
    assert select("two_d", shapes) == [k for k, s in shapes.items() if len(s) == 2]
    assert select("layer_matrices+embeddings", shapes) == [k for k in shapes if k in {*attention, *mlp, *embeddings}]


def test_official_is_the_authors_predicate_verbatim():
    """'weight' in key and ('attn' in key or 'mlp' in key): every open_clip layer matrix; nothing
    of HF ViT, BERT or T5 ('attention' and 'SelfAttention' do not contain 'attn'); HF CLIP's and
    Llama's self_attn/mlp weights; GPT-2's four Conv1D weights (not its attn.bias buffer)."""
    for shapes in (OPEN_CLIP, TIMM_VIT, HF_CLIP, HF_VIT, BERT, GPT2, LLAMA, T5, DINOV2):
        assert select("official", shapes) == [k for k in shapes if "weight" in k and ("attn" in k or "mlp" in k)]
        assert select("attn_mlp", shapes) == [k for k in shapes if "attn" in k or "mlp" in k]
    assert set(select("official", OPEN_CLIP)) == set(CASES["open_clip"][2] + CASES["open_clip"][3])
    assert select("official", HF_VIT) == select("official", BERT) == select("official", T5) == []
    assert select("official", GPT2) == ["transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                                        "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight"]
    assert select("official", DINOV2) == ["encoder.layer.0.mlp.fc1.weight", "encoder.layer.0.mlp.fc2.weight"]


def test_what_layer_matrices_leave_out():
    """Heads and projections outside the layers, buffers named bias, masks and positional tables
    are not layer matrices; a matrix inside a numbered layer that no pattern knows is, and so is
    every matrix of a model without numbered layers."""
    assert not selects("layer_matrices", "transformer.h.0.attn.bias", 4)  # GPT-2's causal mask buffer
    for key in ("visual.proj", "text_projection", "head.weight", "classifier.out_proj.weight", "bert.pooler.dense.weight",
                "lm_head.weight", "attn_mask", "blocks.0.attn.relative_position_bias_table"):
        assert not selects("layer_matrices", key, 2), key
    assert selects("layer_matrices", "blocks.3.adapter.down.weight", 2)
    assert selects("layer_matrices", "w", 2) and not selects("layer_matrices", "w", 1)
    assert select("layer_matrices", DINOV2) == [k for k in DINOV2 if k.startswith("encoder.layer.0.")
                                                and len(DINOV2[k]) == 2]


def test_scopes_sit_on_floor_one():
    """scopes.py reads key names only: it imports errors (floor 0) and nothing else of the package."""
    from test_architecture import import_graph

    assert import_graph()["freqmerge_viz.scopes"] == {"freqmerge_viz.errors"}


def test_scope_names_unions_and_older_names():
    assert scope_parts("layer_matrices + embeddings") == ("layer_matrices", "embeddings")
    assert scope_parts("matrices") == ("all",) and scope_parts("attn_mlp_weights") == ("official",)
    assert selects("matrices", "visual.class_embedding", 1)  # FR's former default: every key, as_matrix decides
    with pytest.raises(ParameterError, match="unknown key scope 'attn'.*layer_matrices"):
        scope_parts("attn")
    with pytest.raises(ParameterError, match=r"filter_scope.*'layer_matrices\+'"):
        fmv.get_method("fr").resolve({"filter_scope": "layer_matrices+"})
    assert fmv.get_method("fr").resolve({"filter_scope": "attention+mlp"})["filter_scope"] == "attention+mlp"
    assert [a.name for a in ARCHITECTURES] == ["open_clip", "timm_vit", "hf_clip", "hf_vit", "bert", "gpt2", "llama",
                                               "t5"]


def test_presets_choose_their_scopes():
    fr = fmv.get_method("fr")
    assert fr.resolve({})["filter_scope"] == "layer_matrices"
    assert fr.resolve({"preset": "official"})["filter_scope"] == "official"
    assert fr.resolve({"preset": "official"})["merge_scope"] == "attn_mlp"
    assert fr.resolve({"preset": "official_lm"})["filter_scope"] == "two_d"
    for name in ("fr_ties", "fr_breadcrumbs"):
        assert fmv.get_method(name).resolve({})["filter_scope"] == "layer_matrices"
        assert fmv.get_method(name).resolve({"preset": "official"})["filter_scope"] == "official"
    free = fmv.get_method("free").resolve({"preset": "official"})
    assert (free["expert_scope"], free["mu_scope"]) == ("attn_mlp", "official")


def test_paper_preset_filters_the_layers_and_leaves_embeddings_opt_in():
    """On the zoo's layout the default filter leaves cls_token, pos_embed and the patch
    embedding as they are; 'layer_matrices+embeddings' filters them too."""
    g = torch.Generator().manual_seed(0)
    default = fmv.method_transform("fr", cutoff=0.5)
    with_embeddings = fmv.method_transform("fr", cutoff=0.5, filter_scope="layer_matrices+embeddings")
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        stack = torch.randn(2, *TIMM_VIT[key], generator=g)
        layer = key.startswith("blocks.")
        assert torch.equal(default(stack.clone(), key), stack) is not layer, key
        assert not torch.equal(with_embeddings(stack.clone(), key), stack), key


def _states(shapes, n_tasks=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    pre = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    return pre, [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(n_tasks)]


def _scope_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, ScopeWarning)]


@pytest.mark.parametrize("shapes, label", [(HF_VIT, "Hugging Face ViT"), (T5, "T5")])
def test_official_preset_on_hf_vit_and_t5_warns_once_and_merges_nothing(shapes, label):
    pre, fts = _states(shapes)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        merged = fmv.merge("fr", pre, fts, preset="official")
        assert all(torch.equal(merged[k], pre[k]) for k in pre)  # silently θ_pre before this warning
    [message] = _scope_warnings(record)
    first_attention = CASES["hf_vit" if shapes is HF_VIT else "t5"][2][0]
    assert label in message and f"{first_attention!r}" in message
    assert "filter_scope='official' selects no key (use 'attention+mlp')" in message
    assert "merge_scope='attn_mlp' selects no key (use 'all')" in message
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        merged = fmv.merge("fr", pre, fts, preset="official", filter_scope="attention+mlp", merge_scope="all")
    assert _scope_warnings(record) == []
    assert not torch.equal(merged[first_attention], pre[first_attention])


def test_scope_without_attention_warns_but_a_chosen_mlp_scope_does_not():
    pre, fts = _states(DINOV2)
    with pytest.warns(ScopeWarning, match=r"filter_scope='official' selects no attention matrix .*"
                                          r"'encoder\.layer\.0\.attention\.attention\.query\.weight'"):
        fmv.merge("fr_ties", pre, fts, preset="official")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fmv.merge("fr", pre, fts, filter_scope="mlp")
        fmv.merge("fr", pre, fts)
    assert _scope_warnings(record) == []


def test_gpt2_official_preset_covers_its_attention_and_merges_quietly():
    pre, fts = _states(GPT2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        merged = fmv.merge("fr", pre, fts, preset="official")
        fmv.merge("fr", pre, fts)
    assert _scope_warnings(record) == []
    assert not torch.equal(merged["transformer.h.0.attn.c_attn.weight"], pre["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(merged["transformer.wte.weight"], pre["transformer.wte.weight"])  # no 'attn'/'mlp'


def test_free_official_on_t5_warns_once_for_backbone_and_experts():
    pre, fts = _states(T5)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fmv.routed_merge("free", pre, fts, preset="official")
    [message] = _scope_warnings(record)
    for part in ("backbone filter_scope='official'", "backbone merge_scope='attn_mlp'",
                 "expert_scope='attn_mlp' selects no key", "mu_scope='official' selects no key"):
        assert part in message


def test_merge_and_expert_scopes_take_scope_names():
    pre, fts = _states(TIMM_VIT)
    merged = fmv.merge("fr", pre, fts, merge_scope="layer_matrices")
    for key in pre:
        assert torch.equal(merged[key], pre[key]) is not selects("layer_matrices", key, pre[key].ndim), key
    free = fmv.routed_merge("free", pre, fts, density=0.5, expert_scope="attention")
    state, backbone = free.task_state(0), free.backbone
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], backbone["blocks.0.attn.qkv.weight"])
    assert torch.equal(state["blocks.0.mlp.fc1.weight"], backbone["blocks.0.mlp.fc1.weight"])


@pytest.mark.parametrize("spec", [FilterSpec(0.1), FilterSpec(0.3, kind="gaussian"), FilterSpec(2.0, units="bins"),
                                  FilterSpec(0.7, convention="official"), FilterSpec(0.05, convention="official")])
@pytest.mark.parametrize("shape", [(16, 48), (15, 37)])
def test_filtering_a_conv1d_weight_equals_filtering_its_transpose(spec, shape):
    """GPT-2 stores W as in × out. Both conventions' masks are symmetric in H and W (the paper's
    normalised radius by construction, the official distance from (H//2, W//2) and min(H, W)
    too), bin for bin: so G(Wᵀ)ᵀ = G(W), to float64 rounding."""
    h, w = shape
    assert torch.equal(spec.mask((w, h), dtype=torch.float64, centered=False).T,
                       spec.mask((h, w), dtype=torch.float64, centered=False))
    conv1d = torch.randn(h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h))
    torch.testing.assert_close(apply_filter(conv1d.T.contiguous(), spec).T, apply_filter(conv1d, spec),
                               rtol=0, atol=1e-12)


def test_inspect_shows_the_architecture_and_each_keys_scopes(tmp_path, capsys, monkeypatch):
    path = tmp_path / "gpt2.safetensors"
    fmv.save_state({k: torch.zeros(s) for k, s in GPT2.items()}, path)
    monkeypatch.setattr(fmv.LazyState, "__getitem__", lambda self, key: pytest.fail("inspect read a tensor"))
    assert main(["inspect", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["architecture"], out["transposed"]) == ("gpt2", True)
    rows = {r["key"]: r for r in out["keys"]}
    assert rows["transformer.h.0.attn.c_attn.weight"]["scopes"] == ["attention", "layer_matrices", "all_matrices",
                                                                   "two_d", "official", "attn_mlp"]
    assert rows["transformer.h.0.attn.bias"]["scopes"] == ["all_matrices", "attn_mlp"]
    assert rows["lm_head.weight"]["scopes"] == ["embeddings", "all_matrices", "two_d"]
    assert main(["inspect", str(path), "--scope", "attention"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("# architecture: GPT-2 (Conv1D); matrices stored in × out (transposed); keys selected by "
                        "attention: 2")
    assert lines[1].split("\t") == ["key", "shape", "dtype", "attention", "mlp", "layer_matrices", "embeddings",
                                    "all_matrices", "two_d", "official", "attn_mlp"]
    assert [line.split("\t")[0] for line in lines[2:]] == CASES["gpt2"][2]
    assert main(["inspect", str(path), "--scope", "attn"]) == 2
