"""Pure translation between OpenAI's chat format and each upstream provider's wire format."""
