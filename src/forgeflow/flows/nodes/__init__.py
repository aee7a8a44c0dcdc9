"""Node kinds of the flow engine: python tools, llm and prompt templates, flex entries, prompty files."""
