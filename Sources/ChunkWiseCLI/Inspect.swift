import ArgumentParser
import ChunkWise
import CWLoRA
import Foundation

struct Inspect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Describe a model: architecture, sizes, tensor types, tokenizer, metadata.")

    @Argument(help: "A GGUF file, a HuggingFace model folder or a llama2.c .bin checkpoint.")
    var path: String
    @Option(help: "Tokenizer to use instead of the model's own.")
    var tokenizer: String?
    @Flag(help: "Print JSON.")
    var json = false
    @Flag(name: .customLong("all-metadata"), help: "List every metadata key.")
    var allMetadata = false

    func run() async throws {
        if AdapterDetection.isAdapter(path) {
            try inspectAdapter()
            return
        }
        let r = try ModelInspector.inspect(path: path, tokenizerPath: tokenizer)
        if json { try printJSON(r); return }
        func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
        print("""
        \(r.path)
          format          \(r.format)
          architecture    \(r.architecture)
          parameters      \(r.parameters) (\(String(format: "%.1f", Double(r.parameters) / 1e6))M)
          weights         \(mib(r.weightBytes))
          layers          \(r.layers)
          hidden / ffn    \(r.hiddenSize) / \(r.intermediateSize)
          heads / kv      \(r.heads) / \(r.kvHeads) (head dim \(r.headDim))
          vocabulary      \(r.vocabSize)
          context         \(r.contextLength)
          rope            theta \(r.ropeTheta), \(r.ropeStyle)\(r.ropeScaling.map { ", scaling \($0)" } ?? "")
          rms eps         \(r.rmsNormEps)
          tied embeddings \(r.tiedEmbeddings)
          tensor types    \(r.tensorTypes.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: " "))
          tokenizer       \(r.tokenizer ?? "-")\(r.tokenizerVocabulary.map { ", \($0) tokens" } ?? "")\(r.bos.map { ", BOS \($0)" } ?? "")\(r.eos.isEmpty ? "" : ", EOS \(r.eos.map(String.init).joined(separator: ","))")
          chat template   \(r.chatTemplate ? "yes" : "no")
        """)
        if !r.metadata.isEmpty {
            print("  metadata (\(r.metadata.count) keys\(allMetadata ? "" : ", tokenizer arrays summarized"))")
            for (k, v) in r.metadata.sorted(by: { $0.key < $1.key }) where allMetadata || !k.hasPrefix("tokenizer.chat") {
                print("    \(k) = \(v)")
            }
        }
    }
}

extension Inspect {
    func inspectAdapter() throws {
        let s = try LoRAAdapter.load(path: path).summary
        if json { try printJSON(s); return }
        func mib(_ b: Int) -> String { String(format: "%.2f MiB", Double(b) / 1_048_576) }
        print("""
        \(s.path)
          type            \(s.format) \(s.peftType)\(s.useRslora ? " (rsLoRA)" : "")\(s.useDora ? " (DoRA)" : "")
          base model      \(s.baseModel ?? "-")
          rank            \(s.rank.map(String.init) ?? "-") (per module: \(s.ranks.map(String.init).joined(separator: ", ")))
          alpha           \(s.alpha.map { String($0) } ?? "-")
          scales          \(s.scales.map { String(format: "%.4g", $0) }.joined(separator: ", "))
          targets         \(s.targetModules.joined(separator: ", "))
          layers          \(s.layers.count) (\(s.layers.first ?? 0)…\(s.layers.last ?? 0))
          modules         \(s.moduleCount)\(s.modulesToSave.isEmpty ? "" : ", modules_to_save: " + s.modulesToSave.joined(separator: ", "))
          q/k row order   \(s.qkRowOrder)
          size            \(mib(s.sizeBytes)) (fp32 in memory)
          content hash    \(s.contentHash)
        """)
        let distinct = Set(s.modules.map { "\($0.rank)/\($0.scale)" })
        if distinct.count > 1 {
            print("  modules with their own rank or scale:")
            let common = s.modules.map { "\($0.rank)/\($0.scale)" }.reduce(into: [String: Int]()) { $0[$1, default: 0] += 1 }.max { $0.value < $1.value }?.key
            for m in s.modules where "\(m.rank)/\(m.scale)" != common {
                print("    \(m.name): rank \(m.rank), scale \(String(format: "%.4g", m.scale))")
            }
        }
    }
}

/// Tells adapter files from model files by content.
enum AdapterDetection {
    static func isAdapter(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return false }
        if isDir.boolValue {
            let fm = FileManager.default
            return fm.fileExists(atPath: path + "/adapter_config.json") || fm.fileExists(atPath: path + "/adapters.safetensors")
        }
        if path.hasSuffix("adapter_config.json") || path.hasSuffix("adapter_model.safetensors") { return true }
        guard let f = try? GGUFFile(path: path) else { return false }
        return f.metadata["general.type"]?.string == "adapter"
    }
}
