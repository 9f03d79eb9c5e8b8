import CWFormats

extension TokenizerLoader {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    /// - `tokenizer.ggml.model = "gpt2"`: byte-level BPE with the pre-tokenizer named by `tokenizer.ggml.pre`
    ///   ("default"/"gpt2", "smollm"/"starcoder"/"refact" (digits split), "llama3"/"llama-bpe", "qwen2"; others fall
    ///   back to the GPT-2 regex with a warning on stderr).
    /// - `tokenizer.ggml.model = "llama"`: SentencePiece BPE (scores, `<0xXX>` byte fallback, add_space_prefix).
    public static func load(gguf: GGUFFile) throws -> any Tokenizer {
        let md = gguf.metadata
        let path = gguf.path
        func fail(_ field: String, _ message: String) -> TokenizerError {
            TokenizerError(path: path, field: field, message: message)
        }
        guard let modelValue = md["tokenizer.ggml.model"] else { throw fail("tokenizer.ggml.model", "missing") }
        guard let model = modelValue.string else { throw fail("tokenizer.ggml.model", "not a string") }
        guard let tokensValue = md["tokenizer.ggml.tokens"] else { throw fail("tokenizer.ggml.tokens", "missing") }
        guard let tokens = tokensValue.stringArray, !tokens.isEmpty else {
            throw fail("tokenizer.ggml.tokens", "not a non-empty array of strings")
        }
        var types: [Int] = []
        if let v = md["tokenizer.ggml.token_type"] {
            guard let t = v.intArray, t.count == tokens.count else {
                throw fail("tokenizer.ggml.token_type", "expected \(tokens.count) integers")
            }
            types = t
        }
        func optionalID(_ key: String) throws -> Int? {
            guard let v = md[key] else { return nil }
            guard let i = v.int else { throw fail(key, "not an integer") }
            if i == -1 || i == Int(UInt32.max) { return nil }  // llama.cpp's "none"
            guard i >= 0 && i < tokens.count else { throw fail(key, "id \(i) out of range 0..<\(tokens.count)") }
            return i
        }
        func optionalBool(_ key: String) throws -> Bool? {
            guard let v = md[key] else { return nil }
            guard let b = v.bool else { throw fail(key, "not a bool") }
            return b
        }
        let bos = try optionalID("tokenizer.ggml.bos_token_id")
        let unk = try optionalID("tokenizer.ggml.unknown_token_id")
        var eos: [Int] = []
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let id = try optionalID(key), !eos.contains(id) { eos.append(id) }
        }
        // llama.cpp also treats well-known end-of-turn control tokens as end-of-generation.
        for (i, t) in tokens.enumerated() where knownEndOfGenerationTexts.contains(t) && !eos.contains(i) {
            if types.isEmpty || types[i] == TokenType.control.rawValue || types[i] == TokenType.userDefined.rawValue {
                eos.append(i)
            }
        }

        switch model {
        case "gpt2":
            guard let mergesValue = md["tokenizer.ggml.merges"] else { throw fail("tokenizer.ggml.merges", "missing") }
            guard let mergeStrings = mergesValue.stringArray else {
                throw fail("tokenizer.ggml.merges", "not an array of strings")
            }
            var merges: [(String, String)] = []
            merges.reserveCapacity(mergeStrings.count)
            for (i, m) in mergeStrings.enumerated() {
                guard let pair = splitMerge(m) else { throw fail("tokenizer.ggml.merges", "entry \(i) \"\(m)\" is not \"a b\"") }
                merges.append(pair)
            }
            let preName: String
            if let v = md["tokenizer.ggml.pre"] {
                guard let s = v.string else { throw fail("tokenizer.ggml.pre", "not a string") }
                preName = s
            } else {
                preName = "default"
            }
            var ignoreMerges = false
            let kind: PreTokenizerKind
            switch preName {
            case "default", "gpt2", "gpt-2": kind = .gpt2
            case "smollm", "starcoder", "refact": kind = .gpt2IndividualDigits
            case "llama3", "llama-bpe", "llama-v3":
                kind = .llama3
                ignoreMerges = true
            case "qwen2": kind = .qwen2
            default:
                warn("\(path): tokenizer.ggml.pre = \"\(preName)\" is not supported; using the GPT-2 pre-tokenizer")
                kind = .gpt2
            }
            var added: [(id: Int, special: Bool)] = []
            for (i, t) in types.enumerated() {
                if t == TokenType.control.rawValue || t == TokenType.unknown.rawValue { added.append((i, true)) }
                else if t == TokenType.userDefined.rawValue { added.append((i, false)) }
            }
            let addBOS = try optionalBool("tokenizer.ggml.add_bos_token") ?? false
            let prefix = try optionalBool("tokenizer.ggml.add_space_prefix") ?? false
            return BPETokenizer(tokens: tokens, merges: merges, mode: .byteLevel(kind, addPrefixSpace: prefix),
                                addedTokens: added, bosTokenID: bos, eosTokenIDs: eos, addsBOSByDefault: addBOS,
                                unknownTokenID: unk, ignoreMerges: ignoreMerges)
        case "llama":
            var scores: [Float] = []
            if let v = md["tokenizer.ggml.scores"] {
                guard let s = v.floatArray, s.count == tokens.count else {
                    throw fail("tokenizer.ggml.scores", "expected \(tokens.count) numbers")
                }
                scores = s
            }
            let addBOS = try optionalBool("tokenizer.ggml.add_bos_token") ?? true
            let prefix = try optionalBool("tokenizer.ggml.add_space_prefix") ?? true
            return SentencePieceTokenizer(flavor: .llamaCpp, tokens: tokens, scores: scores, tokenTypes: types,
                                          bosTokenID: bos, eosTokenIDs: eos, addsBOSByDefault: addBOS,
                                          addSpacePrefix: prefix, unknownTokenID: unk)
        default:
            throw fail("tokenizer.ggml.model", "unsupported tokenizer model \"\(model)\" (expected \"gpt2\" or \"llama\")")
        }
    }

    /// Splits a merge "a b" at the first space after the first character (llama.cpp's rule).
    static func splitMerge(_ m: String) -> (String, String)? {
        guard let first = m.first else { return nil }
        let rest = m[m.index(after: m.startIndex)...]
        guard let space = rest.firstIndex(of: " ") else { return nil }
        let a = String(first) + rest[rest.startIndex..<space]
        let b = String(rest[rest.index(after: space)...])
        guard !b.isEmpty else { return nil }
        return (a, b)
    }
}
