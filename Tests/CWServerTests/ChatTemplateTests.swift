import CWServer
import XCTest

/// The chat formats rendered in Swift, against the texts their Jinja templates produce.
final class ChatTemplateTests: XCTestCase {
    let conv = [ChatMessage(role: "system", content: "Be brief."), ChatMessage(role: "user", content: "Hi"),
                ChatMessage(role: "assistant", content: "Hello!"), ChatMessage(role: "user", content: "Bye")]

    func testDetection() {
        XCTAssertEqual(ChatTemplate.detect("{% for message in messages %}{{'<|im_start|>' + message['role']}}"), .chatML)
        XCTAssertEqual(ChatTemplate.detect("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>' }}"), .llama3)
        XCTAssertEqual(ChatTemplate.detect("{{ bos_token + '[INST] <<SYS>>\\n' }}"), .llama2)
        XCTAssertEqual(ChatTemplate.detect("{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"), .mistral)
        XCTAssertNil(ChatTemplate.detect("{{ '<start_of_turn>' + role }}"))
    }

    func testChatMLWithDefaultSystem() throws {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
        let sys = ChatTemplate.defaultSystemPrompt(in: t)
        XCTAssertEqual(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        XCTAssertEqual(try ChatTemplate.chatML.render([ChatMessage(role: "user", content: "Hi")], defaultSystem: sys),
                       "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        XCTAssertEqual(try ChatTemplate.chatML.render(conv, defaultSystem: sys),
                       "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    }

    func testLlama3() throws {
        XCTAssertEqual(try ChatTemplate.llama3.render(conv),
                       "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    }

    func testLlama2AndMistral() throws {
        XCTAssertEqual(try ChatTemplate.llama2.render(conv),
                       "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]")
        XCTAssertEqual(try ChatTemplate.mistral.render(conv), "[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]")
        XCTAssertThrowsError(try ChatTemplate.mistral.render([ChatMessage(role: "assistant", content: "x")]))
        XCTAssertThrowsError(try ChatTemplate.chatML.render([ChatMessage(role: "tool", content: "x")]))
    }
}
