"""Tiny local Hugging Face model directories (built from configs, with a WordLevel tokenizer trained
on the corpus) so that end-to-end training tests need no download."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "the cat sat on the mat",
    "the dog ate my homework",
    "a bird sang in the tree",
    "my lamp is on the table",
    "turn on the kitchen light",
    "turn off the bedroom fan",
    "what time is it now",
    "set a timer for ten minutes",
]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% if m['role'] == 'assistant' %}"
                 "</s> {% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")


def tokenizer(corpus=CORPUS, chat: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<unk>", "<s>", "</s>", "[CLS]", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = ["###", "Instruction", "Response", ":", "user", "assistant", "system"]
    tok.train_from_iterator(corpus + extra, trainers.WordLevelTrainer(special_tokens=special))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def llama_dir(path: Path, corpus=CORPUS, chat: bool = False, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer(corpus, chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def bert_dir(path: Path, corpus=CORPUS, seed: int = 0) -> Path:
    from transformers import BertConfig, BertModel

    tok = tokenizer(corpus)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def classification_rows() -> list[dict]:
    """Label = whether the sentence is a home-automation command (learnable from words like 'turn')."""
    rows = []
    for s in CORPUS:
        rows.append({"text": s, "label": "home" if s.split()[0] in ("turn", "set", "what") else "other"})
    return rows * 4


# -- session fixtures (imported by tests/train/conftest.py and tests/cli/conftest.py) -------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory):
    return llama_dir(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def bert_path(tmp_path_factory):
    return bert_dir(tmp_path_factory.mktemp("bert"))
