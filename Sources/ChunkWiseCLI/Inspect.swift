import ArgumentParser
import ChunkWise
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
