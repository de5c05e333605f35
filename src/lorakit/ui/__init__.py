"""``lorakit ui``: the local web UI (see :mod:`lorakit.ui.app`); imports nothing heavy at package level."""
