import Foundation

extension TokenizerLoader {
    /// HF `tokenizer.json` with a BPE model: ByteLevel (GPT-2 family; Split regexes of Llama 3 / Qwen2 recognised)
    /// or SentencePiece-style (Metaspace pre-tokenizer, or the Llama normalizer Prepend("▁") + Replace(" ", "▁"),
    /// byte_fallback). Merges as "a b" strings or ["a", "b"] pairs. `tokenizer_config.json` beside the file, if
    /// present, gives add_bos_token / bos_token / eos_token.
    public static func load(tokenizerJSON path: String) throws -> any Tokenizer {
        func fail(_ field: String, _ message: String) -> TokenizerError {
            TokenizerError(path: path, field: field, message: message)
        }
        let root: [String: Any]
        do {
            let data = try Data(contentsOf: URL(fileURLWithPath: path))
            guard let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw fail("(root)", "not a JSON object")
            }
            root = obj
        } catch let e as TokenizerError {
            throw e
        } catch {
            throw fail("(file)", "cannot read JSON: \(error.localizedDescription)")
        }

        // Model.
        guard let model = root["model"] as? [String: Any] else { throw fail("model", "missing or not an object") }
        let modelType = model["type"] as? String ?? (model["merges"] != nil ? "BPE" : "?")
        guard modelType == "BPE" else { throw fail("model.type", "unsupported model \"\(modelType)\" (only BPE)") }
        guard let vocab = model["vocab"] as? [String: Any] else { throw fail("model.vocab", "missing or not an object") }
        var idToToken: [Int: String] = [:]
        idToToken.reserveCapacity(vocab.count)
        for (token, value) in vocab {
            guard let id = (value as? NSNumber)?.intValue, id >= 0 else { throw fail("model.vocab", "bad id for \"\(token)\"") }
            idToToken[id] = token
        }
        var merges: [(String, String)] = []
        if let raw = model["merges"] {
            guard let list = raw as? [Any] else { throw fail("model.merges", "not an array") }
            merges.reserveCapacity(list.count)
            for (i, m) in list.enumerated() {
                if let s = m as? String, let pair = splitMerge(s) {
                    merges.append(pair)
                } else if let a = m as? [Any], a.count == 2, let l = a[0] as? String, let r = a[1] as? String {
                    merges.append((l, r))
                } else {
                    throw fail("model.merges", "entry \(i) is neither \"a b\" nor [\"a\", \"b\"]")
                }
            }
        }
        let byteFallback = model["byte_fallback"] as? Bool ?? false
        let ignoreMerges = model["ignore_merges"] as? Bool ?? false

        // Added tokens.
        var added: [(id: Int, special: Bool)] = []
        if let list = root["added_tokens"] as? [[String: Any]] {
            for (i, t) in list.enumerated() {
                guard let id = (t["id"] as? NSNumber)?.intValue, id >= 0, let content = t["content"] as? String else {
                    throw fail("added_tokens[\(i)]", "needs an integer id and a string content")
                }
                idToToken[id] = content
                added.append((id, t["special"] as? Bool ?? false))
            }
        }
        let size = (idToToken.keys.max() ?? -1) + 1
        guard size > 0, size <= 10_000_000 else { throw fail("model.vocab", "empty or absurd vocabulary") }
        var tokens = [String](repeating: "", count: size)
        for (id, t) in idToToken { tokens[id] = t }
        var tokenToID: [String: Int] = [:]
        for (i, t) in tokens.enumerated() where tokenToID[t] == nil { tokenToID[t] = i }

        // Pre-tokenizer / normalizer / decoder → mode.
        let pre = root["pre_tokenizer"] as? [String: Any]
        let preSteps = flatten(pre, key: "pretokenizers")
        let normSteps = flatten(root["normalizer"] as? [String: Any], key: "normalizers")
        let decoderSteps = flatten(root["decoder"] as? [String: Any], key: "decoders")
        let isByteLevel = preSteps.contains { $0["type"] as? String == "ByteLevel" }
            || decoderSteps.contains { $0["type"] as? String == "ByteLevel" }

        let mode: BPETokenizer.Mode
        if isByteLevel {
            var kind: PreTokenizerKind = .none
            var addPrefixSpace = false
            for step in preSteps {
                switch step["type"] as? String {
                case "ByteLevel":
                    addPrefixSpace = step["add_prefix_space"] as? Bool ?? false
                    if step["use_regex"] as? Bool ?? true, kind == .none { kind = .gpt2 }
                case "Split":
                    let pattern = (step["pattern"] as? [String: Any])?["Regex"] as? String ?? ""
                    kind = regexKind(pattern, path: path)
                case "Digits":
                    if step["individual_digits"] as? Bool ?? false { kind = .gpt2IndividualDigits }
                default:
                    warn("\(path): pre_tokenizer \(step["type"] ?? "?") is not supported; ignored")
                }
            }
            for step in normSteps { warn("\(path): normalizer \(step["type"] ?? "?") is not supported; ignored") }
            mode = .byteLevel(kind, addPrefixSpace: addPrefixSpace)
        } else {
            var opts = MetaspaceOptions()
            for step in normSteps {
                switch step["type"] as? String {
                case "Prepend":
                    opts.normalizers.append(.prepend(step["prepend"] as? String ?? ""))
                case "Replace":
                    let pattern = (step["pattern"] as? [String: Any])?["String"] as? String ?? ""
                    opts.normalizers.append(.replace(pattern, step["content"] as? String ?? ""))
                default:
                    warn("\(path): normalizer \(step["type"] ?? "?") is not supported; ignored")
                }
            }
            for step in preSteps {
                guard step["type"] as? String == "Metaspace" else {
                    warn("\(path): pre_tokenizer \(step["type"] ?? "?") is not supported; ignored")
                    continue
                }
                opts.replacement = step["replacement"] as? String ?? "▁"
                var scheme = MetaspaceOptions.PrependScheme(rawValue: step["prepend_scheme"] as? String ?? "") ?? .always
                if step["prepend_scheme"] == nil, let legacy = step["add_prefix_space"] as? Bool { scheme = legacy ? .always : .never }
                opts.preTokenizer = (scheme, step["split"] as? Bool ?? true)
            }
            // Decoder: a leading-space strip comes from Strip(start >= 1) or a prepending Metaspace decoder.
            opts.stripLeadingSpace = false
            for step in decoderSteps {
                switch step["type"] as? String {
                case "Strip":
                    if ((step["start"] as? NSNumber)?.intValue ?? 0) >= 1 { opts.stripLeadingSpace = true }
                case "Metaspace":
                    let scheme = step["prepend_scheme"] as? String ?? ((step["add_prefix_space"] as? Bool ?? true) ? "always" : "never")
                    if scheme != "never" { opts.stripLeadingSpace = true }
                default: break
                }
            }
            mode = .metaspace(opts)
        }

        // BOS / EOS: post-processor template, then tokenizer_config.json.
        var bos: Int? = nil
        var addBOS = false
        if let post = root["post_processor"] as? [String: Any] {
            for step in flatten(post, key: "processors") where step["type"] as? String == "TemplateProcessing" {
                if let single = step["single"] as? [[String: Any]], let first = single.first,
                   let special = first["SpecialToken"] as? [String: Any], let name = special["id"] as? String {
                    let map = step["special_tokens"] as? [String: Any]
                    let ids = ((map?[name] as? [String: Any])?["ids"] as? [Any])?.compactMap { ($0 as? NSNumber)?.intValue }
                    if let id = ids?.first ?? tokenToID[name] {
                        bos = id
                        addBOS = true
                    }
                }
            }
        }
        var eos: [Int] = []
        let configPath = URL(fileURLWithPath: path).deletingLastPathComponent().appendingPathComponent("tokenizer_config.json").path
        if let data = FileManager.default.contents(atPath: configPath),
           let config = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] {
            func tokenName(_ v: Any?) -> String? { (v as? String) ?? ((v as? [String: Any])?["content"] as? String) }
            if let b = config["add_bos_token"] as? Bool { addBOS = b }
            if let name = tokenName(config["bos_token"]) {
                guard let id = tokenToID[name] else { throw fail("tokenizer_config.json bos_token", "\"\(name)\" not in vocabulary") }
                bos = id
            }
            if let name = tokenName(config["eos_token"]) {
                guard let id = tokenToID[name] else { throw fail("tokenizer_config.json eos_token", "\"\(name)\" not in vocabulary") }
                eos.append(id)
            }
        }
        if bos == nil { bos = tokenToID["<s>"] ?? tokenToID["<|begin_of_text|>"] }
        if addBOS && bos == nil { addBOS = false }
        let addedIDs = Set(added.map(\.id))
        for (i, t) in tokens.enumerated() where addedIDs.contains(i) && !eos.contains(i) {
            if knownEndOfGenerationTexts.contains(t) || t == "</s>" { eos.append(i) }
        }
        let unk = (model["unk_token"] as? String).flatMap { tokenToID[$0] }
        return BPETokenizer(tokens: tokens, merges: merges, mode: mode, addedTokens: added, bosTokenID: bos,
                            eosTokenIDs: eos, addsBOSByDefault: addBOS, unknownTokenID: unk,
                            byteFallback: byteFallback, ignoreMerges: ignoreMerges)
    }

    /// A component or a Sequence of components, as a flat list.
    private static func flatten(_ obj: [String: Any]?, key: String) -> [[String: Any]] {
        guard let obj else { return [] }
        if obj["type"] as? String == "Sequence", let list = obj[key] as? [[String: Any]] {
            return list.flatMap { flatten($0, key: key) }
        }
        return [obj]
    }

    /// Maps the Split regexes of known tokenizers to their scanners.
    private static func regexKind(_ pattern: String, path: String) -> PreTokenizerKind {
        if pattern.contains("\\p{N}{1,3}") { return .llama3 }
        if pattern.contains("(?i:'s|'t|'re|'ve|'m|'ll|'d)") && pattern.contains("\\p{N}|") { return .qwen2 }
        if pattern.hasPrefix("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+") { return .gpt2 }
        warn("\(path): Split regex \(pattern) is not recognised; using the GPT-2 pre-tokenizer")
        return .gpt2
    }
}
