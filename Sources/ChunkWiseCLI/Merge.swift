import ArgumentParser
import ChunkWise
import CWLoRA
import Foundation

struct Merge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge LoRA adapters into a model and write a HuggingFace safetensors folder (fp32).")

    @Option(help: "A GGUF file, a HuggingFace model folder or a llama2.c .bin checkpoint.")
    var model: String
    @Option(name: .customLong("adapter"), help: "An adapter, PATH[:WEIGHT]. Repeatable.")
    var adapters: [String]
    @Option(help: "Output folder (created).")
    var out: String
    @Flag(name: .customLong("allow-partial-adapter"), help: "Accept an adapter some of whose modules are not in the model.")
    var allowPartialAdapter = false

    func validate() throws {
        if adapters.isEmpty { throw ValidationError("give at least one --adapter") }
        for a in adapters { _ = try AdapterSpec.parse(a) }
    }

    func run() async throws {
        let loaded = try ModelLoader.load(path: model)
        let bindings = try adapters.map { try AdapterSpec.parse($0).load() }
        let merged = try writeMergedHF(model: loaded.model, adapters: bindings, to: out, allowPartial: allowPartialAdapter)
        printError("wrote \(out) (\(merged.touched.count) matrices merged; \(String(format: "%.1f", Double(merged.extraBytes) / 1_048_576)) MiB of fp32 copies while merging)")
    }
}
