import Foundation

/// Reading prompts from files, strictly: a prompt file that is not valid UTF-8 is an error
/// naming the file and the byte offset, never silently repaired.
public enum PromptInput {
    public static func readUTF8File(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EngineError.invalidPromptEncoding("\(path): cannot read the prompt file")
        }
        return try decodeUTF8(data, source: path)
    }

    public static func decodeUTF8(_ data: Data, source: String) throws -> String {
        let bytes = [UInt8](data)
        if let bad = firstInvalidUTF8Offset(bytes) {
            throw EngineError.invalidPromptEncoding("\(source): invalid UTF-8 at byte \(bad)")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The offset of the first byte that does not start or continue a valid UTF-8 sequence.
    public static func firstInvalidUTF8Offset(_ b: [UInt8]) -> Int? {
        var i = 0
        while i < b.count {
            let c = b[i]
            let len: Int
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch c {
            case 0x00...0x7F: i += 1; continue
            case 0xC2...0xDF: len = 2
            case 0xE0: len = 3; lo = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: len = 3
            case 0xED: len = 3; hi = 0x9F
            case 0xF0: len = 4; lo = 0x90
            case 0xF1...0xF3: len = 4
            case 0xF4: len = 4; hi = 0x8F
            default: return i
            }
            guard i + len <= b.count else { return i }
            if b[i + 1] < lo || b[i + 1] > hi { return i }
            for k in 2..<len where b[i + k] < 0x80 || b[i + k] > 0xBF { return i }
            i += len
        }
        return nil
    }
}
