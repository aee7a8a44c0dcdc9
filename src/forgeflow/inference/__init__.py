"""What runs inside one model instance: the model server, the runtimes that load a model folder and
answer chats (transformers with continuous batching, llama.cpp), and the GGUF export llama.cpp reads.

Nothing here knows about endpoints, keys or traffic; the control plane (`forgeflow.serving`) starts
instances and talks to them over HTTP.
"""
