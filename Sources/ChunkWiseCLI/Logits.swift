import ArgumentParser
import ChunkWise
import Foundation

struct Logits: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the most likely next tokens after a prompt, with their logits.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var promptOptions: PromptOptions
    @Option(help: "How many top tokens to show.")
    var top: Int = 10
    @Flag(name: .customLong("no-special"), help: "Add no BOS and treat special-token text as plain text.")
    var noSpecial = false
    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        if top < 1 { throw ValidationError("--top must be at least 1") }
    }

    func run() async throws {
        let engine = try modelOptions.makeEngine()
        let text = try promptOptions.text()
        let ids = engine.tokenize(text, addSpecialTokens: !noSpecial, parseSpecial: !noSpecial)
        let logits = try await engine.logits(tokens: ids)
        let order = logits.indices.sorted { logits[$0] > logits[$1] }.prefix(top)
        struct Entry: Encodable { var id: Int; var token: String; var logit: Float }
        struct Out: Encodable { var prompt_tokens: Int; var top: [Entry] }
        let entries = order.map { Entry(id: $0, token: engine.tokenizer.decode([$0], skipSpecialTokens: false), logit: logits[$0]) }
        if json {
            try printJSON(Out(prompt_tokens: ids.count, top: entries))
        } else {
            for e in entries { print(String(format: "%8d  %10.4f  %@", e.id, e.logit, e.token.debugDescription)) }
        }
    }
}
