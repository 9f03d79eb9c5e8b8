import Foundation

/// Progress on standard error: a redrawn bar on a terminal, plain lines otherwise.
public final class ProgressPrinter {
    public let isTTY: Bool
    private var lastLine = ""
    private var lastPlain = Date.distantPast
    private var barShown = false

    public init(isTTY: Bool? = nil) {
        self.isTTY = isTTY ?? (isatty(STDERR_FILENO) == 1)
    }

    /// A step of `label`: `done` of `total`.
    public func update(_ label: String, done: Int, total: Int) {
        let t = max(total, 1)
        if isTTY {
            let width = 28
            let filled = min(width, width * done / t)
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            write("\r\u{1B}[2K\(label) [\(bar)] \(done)/\(total)")
            barShown = true
            if done >= total { write("\n"); barShown = false }
        } else {
            // Plain lines: at most one per 2 s per step, plus the last one.
            let now = Date()
            if done >= total || now.timeIntervalSince(lastPlain) >= 2 {
                let line = "\(label): \(done)/\(total)"
                if line != lastLine { write(line + "\n"); lastLine = line }
                lastPlain = now
            }
        }
    }

    /// A message on its own line.
    public func message(_ s: String) {
        if barShown { write("\n"); barShown = false }
        write(s + "\n")
    }

    private func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }
}
