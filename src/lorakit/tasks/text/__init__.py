"""Text task: Hugging Face causal LMs and classifiers (models, data, intents, inference, quickstart)."""
