"""The CLI drops exactly the third-party warnings it names (lorakit.cli._quiet), each on its own logger."""

import logging

import pytest

from lorakit.cli._quiet import DROPPED, quiet_third_party


@pytest.mark.parametrize("name, needle", DROPPED.items())
def test_only_the_named_message_of_the_named_logger_is_dropped(name, needle, caplog):
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per logger
    logger = logging.getLogger(name)
    assert sum(type(f).__name__ == "_Drop" for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING):
        logger.warning("prefix %s suffix", needle)
        logger.warning("a warning lorakit keeps")
        logging.getLogger("lorakit.other").warning(needle)  # another logger: kept
    assert [r.getMessage() for r in caplog.records] == ["a warning lorakit keeps", needle]
