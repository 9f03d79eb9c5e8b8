import CWFormats
import CWKernels
import CWTokenizers
import CWTransformer
import Foundation

/// Errors the engine reports about requests and files (each names what is wrong).
public enum EngineError: Error, CustomStringConvertible, Equatable {
    case invalidParameter(String)
    case modelNotFound(String)
    case unrecognizedModel(String)
    case tokenizerNotFound(String)
    case invalidPromptEncoding(String)

    public var description: String {
        switch self {
        case .invalidParameter(let m): return m
        case .modelNotFound(let p): return "\(p): no such file or directory"
        case .unrecognizedModel(let m): return m
        case .tokenizerNotFound(let m): return m
        case .invalidPromptEncoding(let m): return m
        }
    }
}

/// A model ready to run: the network and its tokenizer.
public struct LoadedModel: Sendable {
    public let model: LlamaModel
    public let tokenizer: any Tokenizer
    /// A human name (file or folder name).
    public let name: String
    /// The chat template text from the model's metadata, if it has one.
    public let chatTemplate: String?

    public init(model: LlamaModel, tokenizer: any Tokenizer, name: String, chatTemplate: String?) {
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.chatTemplate = chatTemplate
    }
}

/// Finds out what a path holds (GGUF file, HF folder, llama2.c checkpoint) and loads it.
public enum ModelLoader {
    public enum Kind: String, Sendable { case gguf, huggingFace, llama2c }

    /// Which loader a path needs, by content (magic bytes) rather than by name.
    public static func detect(_ path: String) throws -> Kind {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw EngineError.modelNotFound(path) }
        if isDir.boolValue {
            let cfg = (path as NSString).appendingPathComponent("config.json")
            guard FileManager.default.fileExists(atPath: cfg) else {
                throw EngineError.unrecognizedModel("\(path): a model folder needs a config.json (HuggingFace layout)")
            }
            return .huggingFace
        }
        guard let h = FileHandle(forReadingAtPath: path) else { throw EngineError.modelNotFound(path) }
        defer { try? h.close() }
        let magic = (try? h.read(upToCount: 4)) ?? Data()
        if magic == Data("GGUF".utf8) { return .gguf }
        if path.hasSuffix(".bin") { return .llama2c }
        if path.hasSuffix(".gguf") {
            throw EngineError.unrecognizedModel("\(path): not a GGUF file (bad magic \(magic.map { String(format: "%02x", $0) }.joined()))")
        }
        throw EngineError.unrecognizedModel("\(path): unrecognized model file (expected a .gguf file, a HuggingFace folder or a llama2.c .bin)")
    }

    /// Loads model and tokenizer. `tokenizerPath` overrides where the tokenizer comes from
    /// (a tokenizer.json, a llama2.c tok*.bin or a GGUF file).
    public static func load(path: String, tokenizerPath: String? = nil) throws -> LoadedModel {
        let kind = try detect(path)
        let name = (path as NSString).lastPathComponent
        switch kind {
        case .gguf:
            let file = try GGUFFile(path: path)
            let model = try LlamaModel(gguf: file)
            let tok = try tokenizerPath.map(loadTokenizer) ?? TokenizerLoader.load(gguf: file)
            return LoadedModel(model: model, tokenizer: tok, name: name,
                               chatTemplate: file.metadata["tokenizer.chat_template"]?.string)
        case .huggingFace:
            let model = try LlamaModel(huggingFaceDirectory: path)
            let tj = (path as NSString).appendingPathComponent("tokenizer.json")
            let tok: any Tokenizer
            if let tokenizerPath {
                tok = try loadTokenizer(tokenizerPath)
            } else if FileManager.default.fileExists(atPath: tj) {
                tok = try TokenizerLoader.load(tokenizerJSON: tj)
            } else {
                throw EngineError.tokenizerNotFound("\(path): no tokenizer.json in the model folder; pass --tokenizer PATH")
            }
            var template: String? = nil
            let tc = (path as NSString).appendingPathComponent("tokenizer_config.json")
            if let d = FileManager.default.contents(atPath: tc),
               let obj = try? JSONSerialization.jsonObject(with: d) as? [String: Any] {
                template = obj["chat_template"] as? String
            }
            return LoadedModel(model: model, tokenizer: tok, name: name, chatTemplate: template)
        case .llama2c:
            let file = try Llama2cFile(path: path)
            let model = try LlamaModel(llama2c: file)
            let tokPath = try tokenizerPath ?? findLlama2cTokenizer(near: path)
            let tok = try loadTokenizer(tokPath)
            return LoadedModel(model: model, tokenizer: tok, name: name, chatTemplate: nil)
        }
    }

    static func loadTokenizer(_ path: String) throws -> any Tokenizer {
        guard FileManager.default.fileExists(atPath: path) else { throw EngineError.tokenizerNotFound("\(path): tokenizer file not found") }
        if path.hasSuffix(".json") { return try TokenizerLoader.load(tokenizerJSON: path) }
        if (try? detect(path)) == .gguf { return try TokenizerLoader.load(gguf: GGUFFile(path: path)) }
        return try TokenizerLoader.load(llama2c: path)
    }

    /// llama2.c keeps the tokenizer beside the model: tokenizer.bin or a single tok*.bin.
    static func findLlama2cTokenizer(near path: String) throws -> String {
        let dir = (path as NSString).deletingLastPathComponent
        let d = dir.isEmpty ? "." : dir
        let files = (try? FileManager.default.contentsOfDirectory(atPath: d)) ?? []
        if files.contains("tokenizer.bin") { return (d as NSString).appendingPathComponent("tokenizer.bin") }
        let toks = files.filter { $0.hasPrefix("tok") && $0.hasSuffix(".bin") }.sorted()
        if toks.count == 1 { return (d as NSString).appendingPathComponent(toks[0]) }
        throw EngineError.tokenizerNotFound("\(path): no llama2.c tokenizer (tokenizer.bin or tok*.bin) beside the model; pass --tokenizer PATH")
    }
}
