from tiny_hf import bert_path, llama_path  # noqa: F401  (shared session fixtures)
