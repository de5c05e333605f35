import pytest
import tiny_hf as tiny


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory):
    return tiny.llama_dir(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def chat_llama_path(tmp_path_factory):
    return tiny.llama_dir(tmp_path_factory.mktemp("chat-llama"), chat=True)


@pytest.fixture(scope="session")
def bert_path(tmp_path_factory):
    return tiny.bert_dir(tmp_path_factory.mktemp("bert"))
