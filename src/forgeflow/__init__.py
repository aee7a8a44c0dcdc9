"""forgeflow: prepare, fine-tune, register, deploy and chat with your own model, locally."""

__version__ = "0.1.0"
