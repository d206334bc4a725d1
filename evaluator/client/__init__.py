"""Talking to models: the live OpenAI-compatible client (limits, retries) and the providers' batch APIs."""
