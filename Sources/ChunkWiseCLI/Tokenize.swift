import ArgumentParser
import ChunkWise
import Foundation

struct Tokenize: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the token ids of a text.")

    @Option(name: .long, help: "A GGUF file, a HuggingFace model folder or a llama2.c .bin checkpoint.")
    var model: String
    @Option(name: .long, help: "Tokenizer to use instead of the model's own.")
    var tokenizer: String?
    @Option(help: "The text to tokenize.")
    var text: String
    @Flag(name: .customLong("no-special"), help: "Add no BOS and treat special-token text as plain text.")
    var noSpecial = false
    @Flag(help: "Print {\"ids\": [...]} as JSON.")
    var json = false

    func run() async throws {
        let loaded = try ModelLoader.load(path: model, tokenizerPath: tokenizer)
        let ids = loaded.tokenizer.encode(text, addSpecialTokens: !noSpecial, parseSpecial: !noSpecial)
        if json {
            struct Out: Encodable { var ids: [Int] }
            try printJSON(Out(ids: ids))
        } else {
            for id in ids {
                let piece = loaded.tokenizer.tokenString(id) ?? "?"
                print("\(id)\t\(piece)")
            }
        }
    }
}
