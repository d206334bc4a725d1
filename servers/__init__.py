"""Model servers (vLLM on GPU or CPU) and their profiles; the client in `evaluator` talks to what runs here."""
