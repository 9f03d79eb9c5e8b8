import Foundation

/// Builds tokenizers from model files.
public enum TokenizerLoader {
    /// llama2.c `tok*.bin`: Int32 max_token_length, then per token Float32 score, Int32 length, bytes.
    /// The vocabulary size is the number of records in the file. BOS = 1, EOS = 2, BOS added by default.
    public static func load(llama2c path: String) throws -> any Tokenizer {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw TokenizerError(path: path, field: "file", message: "cannot read: \(error.localizedDescription)")
        }
        let bytes = [UInt8](data)
        var offset = 0
        func readU32(_ field: String) throws -> UInt32 {
            guard offset + 4 <= bytes.count else {
                throw TokenizerError(path: path, field: field, message: "truncated at byte \(offset)")
            }
            let v = UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
                | UInt32(bytes[offset + 3]) << 24
            offset += 4
            return v
        }
        let maxLen = Int32(bitPattern: try readU32("max_token_length"))
        guard maxLen > 0 else {
            throw TokenizerError(path: path, field: "max_token_length", message: "must be positive, got \(maxLen)")
        }
        var tokens: [String] = []
        var scores: [Float] = []
        var raw: [[UInt8]] = []
        while offset < bytes.count {
            let index = tokens.count
            let score = Float(bitPattern: try readU32("token[\(index)].score"))
            let len = Int(Int32(bitPattern: try readU32("token[\(index)].length")))
            guard len >= 0, len <= Int(maxLen) + 16, offset + len <= bytes.count else {
                throw TokenizerError(path: path, field: "token[\(index)].length", message: "invalid length \(len)")
            }
            tokens.append(String(decoding: bytes[offset..<(offset + len)], as: UTF8.self))
            scores.append(score)
            raw.append(Array(bytes[offset..<(offset + len)]))
            offset += len
        }
        guard tokens.count >= 3 + 256 else {
            throw TokenizerError(path: path, field: "vocab_size", message: "expected at least 259 tokens, got \(tokens.count)")
        }
        return SentencePieceTokenizer(flavor: .llama2c, tokens: tokens, scores: scores, bosTokenID: 1,
                                      eosTokenIDs: [2], addsBOSByDefault: true, addSpacePrefix: true,
                                      unknownTokenID: 0, rawPieces: raw)
    }
}
