"""What flows run: python tools, chat calls and templates (llm / prompt nodes, `.prompty`), a flow's environment."""
