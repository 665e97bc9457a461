#!/usr/bin/env python3
"""FALLBACK converter for scripts/bench-peers.sh: a Mixtral-style Hugging Face
folder as bench/decode generates it (config.json + *.safetensors, bf16, no
tokenizer) to a GGUF llama.cpp loads, written with gguf-py (the GGUFWriter of
the llama.cpp bundle inside node-llama-cpp). It is used only when
`switchyard export --gguf` is not available; the script labels its results so.

What it writes is what llama.cpp's convert_hf_to_gguf.py writes for Mixtral
(architecture "llama" with experts): q_proj/k_proj rows permuted from
Hugging Face's rotate-half RoPE layout to GGUF's, each layer's experts
stacked into ffn_{gate,up,down}_exps, norms and the router in F32. The
vocabulary is a placeholder (tokenizer.ggml.model "llama", tokens "<tN>"):
the generated model has no tokenizer, and the benchmark feeds token ids.

--outtype bf16: every matrix BF16 (the checkpoint's bytes).
--outtype q8_0: the routed experts Q8_0 (blocks of 32, one f16 scale), every
                other matrix BF16: the same split as Switchyard's
                --quantize int8, which quantizes only the routed experts.

Usage: hf_to_gguf.py --gguf-py DIR --model DIR --outfile OUT.gguf --outtype bf16|q8_0
"""
import argparse
import json
import os
import struct
import sys

import numpy as np


def open_safetensors(model_dir):
    """name -> (path, dtype, shape, begin, end) over every shard."""
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for fn in files:
        path = os.path.join(model_dir, fn)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            hdr = json.loads(f.read(n))
        base = 8 + n
        for name, info in hdr.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            out[name] = (path, info["dtype"], tuple(info["shape"]), base + b, base + e)
    return out


class Reader:
    def __init__(self, model_dir):
        self.t = open_safetensors(model_dir)

    def raw(self, name):
        """The tensor as stored: uint16 for BF16/F16 (bits), float32 for F32."""
        path, dt, shape, b, e = self.t[name]
        npdt = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}[dt]
        a = np.memmap(path, dtype=np.uint8, mode="r", offset=b, shape=(e - b,))
        return dt, a.view(npdt).reshape(shape)

    def bf16(self, name):
        dt, a = self.raw(name)
        if dt == "BF16":
            return np.ascontiguousarray(a)
        f = np.ascontiguousarray(a, dtype=np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16)  # truncation; only for non-bf16 inputs

    def f32(self, name):
        dt, a = self.raw(name)
        if dt == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return np.asarray(a, dtype=np.float32)


def permute(w, n_head):
    # convert_hf_to_gguf.py's LlamaModel.permute: rotate-half -> interleaved RoPE rows.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-py", required=True, help="the gguf-py folder of the llama.cpp bundle")
    ap.add_argument("--model", required=True)
    ap.add_argument("--outfile", required=True)
    ap.add_argument("--outtype", choices=["bf16", "q8_0"], default="bf16")
    args = ap.parse_args()
    sys.path.insert(0, args.gguf_py)
    import gguf  # noqa: E402
    from gguf import GGMLQuantizationType as Q  # noqa: E402

    with open(os.path.join(args.model, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "mixtral":
        sys.exit("hf_to_gguf.py: only model_type mixtral (bench/decode's generated model), got %r" % cfg.get("model_type"))
    D, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    Dh = cfg.get("head_dim") or D // H
    E, K, F = cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"]
    rd = Reader(args.model)
    q8 = args.outtype == "q8_0"

    # (gguf name, producer, raw type); producers return arrays in GGUF's
    # numpy order (ne reversed). Written one at a time.
    plan = []

    def bf16_mat(gname, fn):
        plan.append((gname, fn, Q.BF16))

    def f32_vec(gname, hname):
        plan.append((gname, lambda: rd.f32(hname), Q.F32))

    bf16_mat("token_embd.weight", lambda: rd.bf16("model.embed_tokens.weight"))
    for l in range(L):
        p = "model.layers.%d." % l
        b = "blk.%d." % l
        f32_vec(b + "attn_norm.weight", p + "input_layernorm.weight")
        bf16_mat(b + "attn_q.weight", lambda p=p: permute(rd.bf16(p + "self_attn.q_proj.weight"), H))
        bf16_mat(b + "attn_k.weight", lambda p=p: permute(rd.bf16(p + "self_attn.k_proj.weight"), Hkv))
        bf16_mat(b + "attn_v.weight", lambda p=p: rd.bf16(p + "self_attn.v_proj.weight"))
        bf16_mat(b + "attn_output.weight", lambda p=p: rd.bf16(p + "self_attn.o_proj.weight"))
        f32_vec(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        plan.append((b + "ffn_gate_inp.weight", lambda p=p: rd.f32(p + "block_sparse_moe.gate.weight"), Q.F32))
        for gname, w in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")):
            names = [p + "block_sparse_moe.experts.%d.%s.weight" % (e, w) for e in range(E)]
            if q8:
                plan.append((b + gname + ".weight", lambda names=names: np.stack([rd.f32(n) for n in names]), Q.Q8_0))
            else:
                plan.append((b + gname + ".weight", lambda names=names: np.stack([rd.bf16(n) for n in names]), Q.BF16))
    f32_vec("output_norm.weight", "model.norm.weight")
    head = "lm_head.weight" if "lm_head.weight" in rd.t else "model.embed_tokens.weight"
    bf16_mat("output.weight", lambda: rd.bf16(head))

    w = gguf.GGUFWriter(args.outfile, "llama")
    w.add_name("switchyard-generated mixtral-style (gguf-py fallback)")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.MOSTLY_BF16)
    w.add_vocab_size(V)
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(D)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(Hkv)
    w.add_rope_dimension_count(Dh)
    w.add_rope_freq_base(float(cfg.get("rope_theta", 1e6)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_expert_count(E)
    w.add_expert_used_count(K)
    w.add_tokenizer_model("llama")
    toks = ["<unk>", "<s>", "</s>"] + ["<t%d>" % i for i in range(3, V)]
    w.add_token_list(toks[:V])
    w.add_token_scores([0.0] * V)
    types = [int(gguf.TokenType.NORMAL)] * V
    types[0] = int(gguf.TokenType.UNKNOWN)
    types[1] = types[2] = int(gguf.TokenType.CONTROL)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    # Shapes and byte counts first (the header), then the data, one tensor
    # at a time, so memory holds one layer's stacked experts at most.
    def shape_of(gname):
        if gname == "token_embd.weight" or gname == "output.weight":
            return (V, D)
        part = gname.split(".", 2)[-1]
        return {
            "attn_norm.weight": (D,), "ffn_norm.weight": (D,), "output_norm.weight": (D,),
            "attn_q.weight": (H * Dh, D), "attn_k.weight": (Hkv * Dh, D), "attn_v.weight": (Hkv * Dh, D),
            "attn_output.weight": (D, H * Dh), "ffn_gate_inp.weight": (E, D),
            "ffn_gate_exps.weight": (E, F, D), "ffn_up_exps.weight": (E, F, D), "ffn_down_exps.weight": (E, D, F),
        }[part if gname != "output_norm.weight" else gname]

    for gname, _, qt in plan:
        shape = shape_of(gname)
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        nbytes = int(np.prod(shape)) // bs * ts
        byte_shape = tuple(shape[:-1]) + (shape[-1] // bs * ts,)
        w.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for gname, fn, qt in plan:
        a = fn()
        if qt == Q.Q8_0:
            a = gguf.quants.quantize(a, Q.Q8_0)
        a = np.ascontiguousarray(a)
        w.write_tensor_data(a.view(np.uint8).reshape(a.shape[:-1] + (-1,)))
    w.close()
    print("hf_to_gguf.py: wrote %s (%s, %.2f GB)" % (args.outfile, args.outtype, os.path.getsize(args.outfile) / 1e9), file=sys.stderr)


if __name__ == "__main__":
    main()
