// CWServer — the OpenAI-compatible server (placeholder)
