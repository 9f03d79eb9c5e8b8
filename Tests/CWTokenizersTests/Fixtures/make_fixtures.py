"""Regenerates the tokenizer.json fixtures and their expected ids (not needed to run the tests).

    pip install tokenizers
    python3 Tests/CWTokenizersTests/Fixtures/make_fixtures.py [path/to/tinyshakespeare/input.txt]

Writes, next to this script:
  bytelevel.tokenizer.json          ByteLevel BPE, merges as ["a","b"] pairs, specials + one non-special added token
  bytelevel-strings.tokenizer.json  the same tokenizer with merges as "a b" strings
  metaspace.tokenizer.json          SentencePiece-era Llama layout: normalizer Prepend("▁")+Replace(" ","▁"),
                                    BPE byte_fallback with <0x00>..<0xFF>, decoder Replace/ByteFallback/Fuse/Strip,
                                    merges as "a b" strings; tokenizer_config in metaspace.tokenizer_config.json
  metaspace-pretok.tokenizer.json   Metaspace pre-tokenizer (prepend_scheme=first, split=true) + Metaspace decoder,
                                    merges as pairs
  expected.json                     per fixture: cases with ids (with/without special tokens), decodes
"""
import json, os, sys
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, normalizers, trainers, processors, AddedToken

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../../../shared/data/tinyshakespeare/input.txt")
text = open(src, encoding="utf-8").read()[:6000]
paragraphs = [p for p in text.split("\n\n") if p.strip()]

CASES = [
    "Hello world", "First Citizen:\nBefore we proceed any further, hear me speak.",
    "", " ", "  leading and trailing  ", "a    b        c  d", "line1\n\nline2\tTabbed\t\tdouble\r\nCRLF\n",
    "Café au lait, naïve façade, Zürich", "我爱自然语言处理。", "こんにちは、世界！", "I love pizza 🍕🍕! 👍🏽 🙂",
    "é ñ 👨\u200d👩\u200d👧", "Pi is 3.14159, 1,000,000 people in 2024.", "1234567890",
    "I'm sure they'll say it's fine, but we'd've known.", "<s>Hello</s>", "foo<|im_end|>bar<|im_start|>baz",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n", "Say [NOTE] twice: [NOTE][NOTE]", "∑ x² ≤ ∞ → α·β",
    "aaaaaaaaaaaaaaaaaaaaaaaa", "MENENIUS:\nWhat work's, my countrymen, in hand?",
]

def cases_for(tok):
    out = []
    for s in CASES:
        e = tok.encode(s, add_special_tokens=False)
        e2 = tok.encode(s, add_special_tokens=True)
        out.append({"text": s, "ids": e.ids, "ids_add_special_tokens": e2.ids,
                    "decoded": tok.decode(e.ids, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(e.ids, skip_special_tokens=True)})
    return out

def strings_merges(path_in, path_out):
    d = json.load(open(path_in, encoding="utf-8"))
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    json.dump(d, open(path_out, "w", encoding="utf-8"), ensure_ascii=False, indent=1)

expected = {}

# 1. ByteLevel BPE
bl = Tokenizer(models.BPE())
bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
bl.decoder = decoders.ByteLevel()
bl.train_from_iterator(paragraphs, trainers.BpeTrainer(
    vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
bl.add_tokens([AddedToken("[NOTE]", special=False, normalized=False)])
p = os.path.join(here, "bytelevel.tokenizer.json")
bl.save(p)
strings_merges(p, os.path.join(here, "bytelevel-strings.tokenizer.json"))
expected["bytelevel"] = cases_for(bl)

# 2. SentencePiece-era Llama layout (normalizer + byte fallback)
def spm_vocab(pre):
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    if pre is not None:
        t.normalizer = None
        t.pre_tokenizer = pre
    t.train_from_iterator(paragraphs, trainers.BpeTrainer(vocab_size=140, limit_alphabet=60, show_progress=False))
    d = json.loads(t.to_str())
    trained_vocab = d["model"]["vocab"]; merges = d["model"]["merges"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for tok_, _ in sorted(trained_vocab.items(), key=lambda kv: kv[1]):
        if tok_ not in vocab:
            vocab[tok_] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    return vocab, merges

vocab, merges = spm_vocab(None)
ms = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
ms.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
ms.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
ms.add_special_tokens([AddedToken("<unk>", special=True, normalized=False), AddedToken("<s>", special=True, normalized=False),
                       AddedToken("</s>", special=True, normalized=False)])
ms.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
p = os.path.join(here, "metaspace.tokenizer.json")
ms.save(p)
strings_merges(p, p)
json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
          open(os.path.join(here, "metaspace.tokenizer_config.json"), "w"), indent=1)
expected["metaspace"] = cases_for(ms)

# 3. Metaspace pre-tokenizer (prepend_scheme=first, split=true)
pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
vocab, merges = spm_vocab(pre)
mp = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
mp.pre_tokenizer = pre
mp.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True), decoders.ByteFallback(), decoders.Fuse()])
mp.add_special_tokens([AddedToken("<unk>", special=True, normalized=False), AddedToken("<s>", special=True, normalized=False),
                       AddedToken("</s>", special=True, normalized=False)])
mp.save(os.path.join(here, "metaspace-pretok.tokenizer.json"))
expected["metaspace-pretok"] = cases_for(mp)

json.dump(expected, open(os.path.join(here, "expected.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
for f in sorted(os.listdir(here)):
    print(f, os.path.getsize(os.path.join(here, f)))

# Pre-tokenizer regex splits (Split(..., "isolated") keeps every match and the gaps between).
from tokenizers import Regex
PATTERNS = {
    "gpt2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
SPLIT_CASES = CASES + ["Don'T WE'LL 'S", "x  \n\n  y", "  \n", "12345 abc123def", "(hello) [x]\n\n\tz", "a\u00a0b\u2003c", "tab\t\tend\t"]
splits = {}
for name, pat in PATTERNS.items():
    pt = pre_tokenizers.Split(Regex(pat), behavior="isolated")
    splits[name] = [{"text": s, "pieces": [p for p, _ in pt.pre_tokenize_str(s)]} for s in SPLIT_CASES]
json.dump(splits, open(os.path.join(here, "pretokenizer_splits.json"), "w", encoding="utf-8"), ensure_ascii=False, indent=1)
