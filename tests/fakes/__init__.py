"""Fakes for tests: a scripted OpenAI-compatible LLM server (and others' fakes beside it)."""
