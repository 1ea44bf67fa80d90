"""The LLM edge gateway server."""
