"""Writes tiny tokenizer-only GGUF fixtures (no tensors) for the SPM-from-GGUF and loader-error tests.

    pip install gguf
    python3 Tests/CWTokenizersTests/Fixtures/make_gguf_fixtures.py
"""
import os
import gguf

here = os.path.dirname(os.path.abspath(__file__))

def spm_vocab():
    toks, scores, types = [], [], []
    def add(t, s=0.0, ty=gguf.TokenType.NORMAL):
        toks.append(t); scores.append(float(s)); types.append(int(ty))
    add("<unk>", 0, gguf.TokenType.UNKNOWN); add("<s>", 0, gguf.TokenType.CONTROL); add("</s>", 0, gguf.TokenType.CONTROL)
    for b in range(256):
        add("<0x%02X>" % b, 0, gguf.TokenType.BYTE)
    for t in ["▁", "h", "e", "l", "o", "w", "r", "d"]:
        add(t, -20.0)
    for t, s in [("he", -1), ("ll", -2), ("llo", -3), ("hello", -4), ("▁hello", -5), ("wo", -6), ("rl", -7),
                 ("rld", -8), ("world", -9), ("▁world", -10), ("▁w", -0.5)]:
        add(t, float(s))
    add("<tool>", 0, gguf.TokenType.USER_DEFINED)
    return toks, scores, types

def write(name, model, with_merges=True, spm=True):
    w = gguf.GGUFWriter(os.path.join(here, name), "llama")
    w.add_block_count(1)
    w.add_tokenizer_model(model)
    toks, scores, types = spm_vocab()
    w.add_token_list(toks)
    if spm:
        w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

write("spm-tiny.gguf", "llama")
write("bad-model.gguf", "bert")
write("gpt2-no-merges.gguf", "gpt2", spm=False)
for f in sorted(os.listdir(here)):
    if f.endswith(".gguf"):
        print(f, os.path.getsize(os.path.join(here, f)))
