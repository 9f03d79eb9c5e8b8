import Foundation

/// One chat message (text content only).
public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// The chat formats the server renders in Swift (no Jinja engine): the model's
/// `tokenizer.chat_template` is recognised by its marker tokens and rendered by hand.
///
/// - `chatML`: `<|im_start|>role\ncontent<|im_end|>\n` … `<|im_start|>assistant\n` (SmolLM2, Qwen).
///   A default system prompt written into the template (`… != 'system' %}{{ '<|im_start|>system\n…<|im_end|>` ) is kept.
/// - `llama3`: `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` … (BOS from the tokenizer).
/// - `llama2`: `[INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] …`.
/// - `mistral`: `[INST] user [/INST]assistant</s>[INST] …` (a system message is prepended to the first user turn).
public enum ChatTemplate: String, Sendable, Equatable {
    case chatML, llama3, llama2, mistral

    /// Recognises a template by its markers; nil when it is none of the supported formats.
    public static func detect(_ template: String) -> ChatTemplate? {
        if template.contains("<|im_start|>") { return .chatML }
        if template.contains("<|start_header_id|>") { return .llama3 }
        if template.contains("[INST]") { return template.contains("<<SYS>>") ? .llama2 : .mistral }
        return nil
    }

    /// The default system prompt a ChatML template inserts when the first message is not a system one.
    public static func defaultSystemPrompt(in template: String) -> String? {
        guard template.contains("!= 'system'") || template.contains("!= \"system\"") else { return nil }
        for quote in ["'", "\""] {
            let opener = "\(quote)<|im_start|>system\n"
            guard let start = template.range(of: opener) else { continue }
            let rest = template[start.upperBound...]
            guard let end = rest.range(of: "<|im_end|>") else { continue }
            let text = String(rest[..<end.lowerBound])
            if !text.contains("{{") && !text.contains("{%") && !text.contains("message") { return text }
        }
        return nil
    }

    /// Renders the conversation, ending with the assistant turn opener.
    /// - Throws: `APIError` for an invalid conversation (e.g. a role the format has no place for).
    public func render(_ messages: [ChatMessage], defaultSystem: String? = nil) throws(APIError) -> String {
        guard !messages.isEmpty else { throw .badRequest("'messages' must not be empty", param: "messages") }
        for (i, m) in messages.enumerated() where !["system", "user", "assistant"].contains(m.role) {
            throw .badRequest("messages[\(i)].role must be system, user or assistant, got '\(m.role)'", param: "messages[\(i)].role")
        }
        var out = ""
        switch self {
        case .chatML:
            if let d = defaultSystem, messages[0].role != "system" { out += "<|im_start|>system\n\(d)<|im_end|>\n" }
            for m in messages { out += "<|im_start|>\(m.role)\n\(m.content)<|im_end|>\n" }
            out += "<|im_start|>assistant\n"
        case .llama3:
            for m in messages {
                out += "<|start_header_id|>\(m.role)<|end_header_id|>\n\n\(m.content.trimmingCharacters(in: .whitespacesAndNewlines))<|eot_id|>"
            }
            out += "<|start_header_id|>assistant<|end_header_id|>\n\n"
        case .llama2, .mistral:
            var msgs = messages
            var system: String? = nil
            if msgs[0].role == "system" { system = msgs.removeFirst().content }
            guard !msgs.isEmpty else { throw .badRequest("the conversation needs a user message after the system message", param: "messages") }
            for (i, m) in msgs.enumerated() {
                let expected = i % 2 == 0 ? "user" : "assistant"
                guard m.role == expected else {
                    throw .badRequest("this model's chat format needs alternating user/assistant messages (after an optional system message); message \(i) is '\(m.role)'",
                                      param: "messages")
                }
                if m.role == "user" {
                    var content = m.content.trimmingCharacters(in: .whitespacesAndNewlines)
                    if i == 0, let s = system {
                        content = self == .llama2 ? "<<SYS>>\n\(s)\n<</SYS>>\n\n\(content)" : "\(s)\n\n\(content)"
                    }
                    if i > 0 { out += self == .llama2 ? "<s>" : "" }
                    out += "[INST] \(content) [/INST]"
                } else {
                    let content = m.content.trimmingCharacters(in: .whitespacesAndNewlines)
                    out += self == .llama2 ? " \(content) </s>" : "\(content)</s>"
                }
            }
        }
        return out
    }
}
